import numpy as np
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
    """OpenVINO runs ONNX MaxPool's indices output in a slow reference kernel: the export has no pool
    with indices and no scatter, and at a new odd size it still equals torch's pool and unpool."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import io

    class PoolUnpool(nn.Module):
        def forward(self, x):
            pooled, where = max_pool_switches(x)
            return max_unpool(pooled, where, x.shape[-2:])

    buffer = io.BytesIO()
    torch.onnx.export(PoolUnpool(), (torch.randn(1, 2, 8, 8),), buffer, dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})  # fmt: skip
    nodes = {n.op_type: n for n in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert "ArgMax" in nodes and not {"MaxPool", "ScatterElements", "MaxUnpool"} & set(nodes)
    x = torch.randint(0, 3, (2, 2, 9, 13), generator=torch.Generator().manual_seed(0)).float()  # ties
    (exported,) = ort.InferenceSession(buffer.getvalue()).run(None, {"x": x.numpy()})
    pooled, index = F.max_pool2d(x, 2, stride=2, return_indices=True)
    assert np.array_equal(exported, nn.MaxUnpool2d(2, stride=2)(pooled, index, output_size=x.shape[-2:]).numpy())


def test_max_unpool_refuses_other_index_types():
    x = torch.randn(1, 1, 2, 2)
    with pytest.raises(TypeError, match="int64 flat indices or uint8 switches"):
        max_unpool(x, torch.zeros(1, 1, 2, 2, dtype=torch.int32), (4, 4))
