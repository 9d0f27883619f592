"""Reports: leaderboards (Markdown, HTML, JSON) and flat record exports, built from the store."""
