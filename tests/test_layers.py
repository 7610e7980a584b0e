import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semseg.layers import max_pool_cells, max_pool_switches, max_unpool


@pytest.mark.parametrize("size", [(8, 8), (9, 13), (33, 47)])
@pytest.mark.parametrize("values", ["random", "ties"])
@pytest.mark.parametrize("pool", [max_pool_switches, max_pool_cells], ids=["eager", "exported"])
def test_max_pool_and_unpool_equal_torch_for_any_size(size, values, pool):
    """Values, where each maximum goes back, and gradients all equal torch's MaxPool2d(return_indices) +
    MaxUnpool2d, ties included (flat image regions and ReLU zeros give equal values in a window),
    with flat indices (eager) and with the switches an export records."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *size, generator=generator)
    if values == "ties":
        x = torch.randint(0, 3, x.shape, generator=generator).float()
    x.requires_grad_(True)
    pooled, switches = pool(x)
    ours = max_unpool(pooled, switches, x.shape[-2:])
    torch_pooled, index = F.max_pool2d(x, 2, stride=2, return_indices=True)
    theirs = nn.MaxUnpool2d(2, stride=2)(torch_pooled, index, output_size=x.shape[-2:])
    assert ours.shape == (2, 3, *size) and switches.dtype == (torch.uint8 if pool is max_pool_cells else torch.int64)
    assert torch.equal(pooled, torch_pooled) and torch.equal(ours, theirs)
    assert torch.equal(ours != 0, theirs != 0)  # the same cell of every window, not only the same values
    upstream = torch.randn(ours.shape, generator=generator)
    (grad_ours,) = torch.autograd.grad((ours * upstream).sum(), x)
    (grad_theirs,) = torch.autograd.grad((theirs * upstream).sum(), x)
    assert torch.equal(grad_ours, grad_theirs)


def test_exports_record_switches_not_a_pool_with_indices():
    """OpenVINO runs ONNX MaxPool's indices output in a slow reference kernel: the export must not have one."""
    onnx = pytest.importorskip("onnx")
    import io

    class PoolUnpool(nn.Module):
        def forward(self, x):
            pooled, where = max_pool_switches(x)
            return max_unpool(pooled, where, x.shape[-2:])

    buffer = io.BytesIO()
    torch.onnx.export(PoolUnpool(), (torch.randn(1, 2, 9, 13),), buffer, dynamo=False, opset_version=17)
    nodes = onnx.load_from_string(buffer.getvalue()).graph.node
    assert all(len(n.output) == 1 for n in nodes if n.op_type == "MaxPool")
    assert not any(n.op_type in ("ScatterElements", "MaxUnpool") for n in nodes)
