"""ImageNet backbones in plain PyTorch: ResNet, VGG16 and MobileNetV3-Large.

Each returns a dict of feature maps and declares their channels and strides in
``feature_info``; weights load from local torchvision- or timm-named files.
"""

from semseg.backbones.base import Backbone, FeatureInfo
from semseg.backbones.mobilenet import MobileNetV3, mobilenet_v3_large
from semseg.backbones.registry import create_backbone, list_backbones
from semseg.backbones.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101
from semseg.backbones.vgg import VGG, vgg16, vgg16_bn, vgg_fc_as_conv
from semseg.backbones.weights import detect_naming, load_backbone_weights, read_state_dict

__all__ = [
    "VGG",
    "Backbone",
    "BasicBlock",
    "Bottleneck",
    "FeatureInfo",
    "MobileNetV3",
    "ResNet",
    "create_backbone",
    "detect_naming",
    "list_backbones",
    "load_backbone_weights",
    "mobilenet_v3_large",
    "read_state_dict",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "vgg16",
    "vgg16_bn",
    "vgg_fc_as_conv",
]
