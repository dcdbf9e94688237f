from torchvision._placeholder import module_getattr
from torchvision.transforms import functional  # noqa: F401
from torchvision.transforms.functional import InterpolationMode  # noqa: F401

__getattr__ = module_getattr("torchvision.transforms")
