import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semseg.layers import max_unpool


@pytest.mark.parametrize("size", [(8, 8), (9, 13), (33, 47)])
def test_max_unpool_equals_torch_for_any_size(size):
    x = torch.randn(2, 3, *size, requires_grad=True)
    pooled, index = F.max_pool2d(x, 2, stride=2, return_indices=True)
    ours = max_unpool(pooled, index, x.shape[-2:])
    theirs = nn.MaxUnpool2d(2, stride=2)(pooled, index, output_size=x.shape[-2:])
    assert ours.shape == (2, 3, *size)
    assert torch.equal(ours, theirs)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x, retain_graph=True)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), x)
    assert torch.equal(grad_ours, grad_theirs)
