"""Class-per-folder images (``<data_dir>/[root/]train/<class>/*`` and ``.../test/<class>/*``),
e.g. 000's ILSVRC crops, read with ``torchvision.datasets.ImageFolder``: any format PIL opens,
converted to RGB, resized and centre-cropped to ``size`` x ``size``, scaled to [0,1]."""

from __future__ import annotations

from pathlib import Path

import torch

from advarena.api import Dataset, DatasetInfo, Splits, TensorData
from advarena.errors import DataError
from advarena.params import param

from ._common import missing, unreadable


class ImageFolderData(Dataset):
    """Your own class-per-folder images (train/ and test/), RGB, size x size in [0,1]."""

    name = "imagefolder"
    paper = "000 (ILSVRC crops); torchvision ImageFolder layout"
    family = "cifar"
    needs_data_dir = True

    root: str = param("", help="sub-folder of the data dir that holds train/ and test/")
    size: int = param(128, ge=1, help="side in pixels after resize and centre crop")

    def load(self, data_dir: Path | None = None, download: bool = False) -> Splits:
        from torchvision import datasets, transforms

        base = Path(data_dir) / self.root if data_dir is not None else None
        for split in ("train", "test"):
            if base is None or not (base / split).is_dir():
                raise missing(self.name, base, "image folders", f"{split}/<class>/<image>",
                              can_download=False)
        # Resize the short side then centre-crop: square inputs without distorting the aspect.
        tf = transforms.Compose([transforms.Resize(self.size), transforms.CenterCrop(self.size),
                                 transforms.ToTensor()])
        try:
            train, test = (datasets.ImageFolder(str(base / s), transform=tf)
                           for s in ("train", "test"))
        except Exception as exc:  # no class folders, or no image files in them
            raise unreadable(self.name, base, exc) from exc
        # ImageFolder numbers the classes of each folder on its own; use train's numbering for
        # test too, so a class missing from test/ does not shift the labels.
        extra = sorted(set(test.classes) - set(train.classes))
        if extra:
            raise DataError(f"{self.name}: test/ has classes that train/ lacks: {', '.join(extra)}")
        remap = torch.tensor([train.class_to_idx[c] for c in test.classes], dtype=torch.int64)
        info = DatasetInfo(name=self.name, input_shape=(3, self.size, self.size),
                           num_classes=len(train.classes), bounds=(0.0, 1.0), family=self.family)
        tr, te = self._stack(train), self._stack(test)
        return Splits(info=info, train=tr, test=TensorData(te.x, remap[te.y]))

    def _stack(self, ds) -> TensorData:
        xs, ys = [], []
        for i in range(len(ds)):
            try:
                x, y = ds[i]
            except Exception as exc:  # a corrupt or non-image file among the images
                raise unreadable(self.name, ds.samples[i][0], exc) from exc
            xs.append(x)
            ys.append(y)
        return TensorData(torch.stack(xs), torch.tensor(ys, dtype=torch.int64))
