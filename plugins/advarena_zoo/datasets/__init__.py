"""Dataset plugins, one module each."""

from .cifar import CIFAR10
from .digits import Digits
from .imagefolder import ImageFolderData
from .mnist import MNIST, FashionMNIST
from .svhn import SVHN
from .toy import Circles, Moons

DATASETS: list = [Digits, Moons, Circles, MNIST, FashionMNIST, CIFAR10, SVHN, ImageFolderData]
