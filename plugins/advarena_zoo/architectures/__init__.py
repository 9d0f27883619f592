"""Architecture plugins, one module each (shared helpers in ``layers``)."""

from .cnn_001 import CNN001
from .cnn_004_mnist import CNN004MNIST
from .cnn_004_svhn import CNN004SVHN
from .convnet_002 import ConvNet002
from .lenet5 import LeNet5
from .mlp_002 import MLP002
from .mlp_toy import MLPToy
from .nin_002 import NIN002
from .resnet32 import ResNet32
from .resnet50 import ResNet50
from .resnet_001 import ResNet001
from .vgg13_bn_gap import VGG13BNGAP

ARCHITECTURES: list = [CNN001, ResNet001, MLPToy, LeNet5, MLP002, ConvNet002, NIN002,
                       CNN004MNIST, CNN004SVHN, VGG13BNGAP, ResNet32, ResNet50]
