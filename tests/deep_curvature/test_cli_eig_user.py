"""Issue 22: `hessbatch eig` on a user's own model (--model-factory MODULE:FACTORY with
--weights, or --torchscript), its self-test, and progress on stderr. Before issue 22 only the
CLI's own checkpoints could reach it, and a long solve printed nothing until the end."""

import textwrap

import pytest
import torch
import torch.nn.functional as F

from hessbatch.cli import main
from hessbatch.deep import top_eigenvalue

MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    class NoDouble(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.tanh(x)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * (1 - torch.tanh(x) ** 2)

    class Act(nn.Module):
        def forward(self, x):
            return NoDouble.apply(x)

    def make_net():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.Softplus(), nn.Linear(10, 3))

    def make_bad_net():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 10), Act(), nn.Linear(10, 3))
''')


@pytest.fixture
def user(tmp_path, monkeypatch):
    (tmp_path / "usernets_i22.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    mod = importlib.import_module("usernets_i22")
    torch.manual_seed(0)
    net = mod.make_net()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    x, y = torch.randn(60, 1, 3, 4), torch.randint(3, (60,))
    torch.save((x, y), tmp_path / "data.pt")
    return tmp_path, net, x, y, mod


def _value(out):
    return float(out.strip().splitlines()[-1].split()[-1])


def test_eig_on_a_user_factory_with_weights_and_torchscript(user, capsys):
    tmp, net, x, y, _ = user
    common = ["--data-file", str(tmp / "data.pt"), "--hessian-batch", "40", "--max-hvp", "30",
              "--tol", "1e-8", "--seed", "1"]
    assert main(["eig", "--model-factory", "usernets_i22:make_net", "--weights",
                 str(tmp / "w.pt"), *common]) == 0
    cap = capsys.readouterr()
    idx = torch.randperm(60, generator=torch.Generator().manual_seed(1))[:40]
    ref = top_eigenvalue(net, F.cross_entropy, [(x[idx], y[idx])], max_hvp=30, tol=1e-8,
                         seed=1)
    assert abs(_value(cap.out) - ref.value) <= 1e-6 * ref.value
    assert "HVP self-test" in cap.err and "FAILED" not in cap.err
    # progress: one line per product, on stderr, as it finishes
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("eig: product ")]
    assert len(lines) == ref.n_hvp and lines[0].startswith("eig: product 1/30: estimate ")
    scripted = torch.jit.script(net)
    torch.jit.save(scripted, str(tmp / "net.ts"))
    assert main(["eig", "--torchscript", str(tmp / "net.ts"), *common]) == 0
    assert abs(_value(capsys.readouterr().out) - ref.value) <= 1e-6 * ref.value


def test_eig_self_test_reaches_a_user_model_and_refuses_a_wrong_double_backward(user, capsys):
    tmp, *_ = user
    argv = ["eig", "--model-factory", "usernets_i22:make_bad_net", "--data-file",
            str(tmp / "data.pt"), "--hessian-batch", "40"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "FAILED" in err and "once_differentiable" in err and "--hvp-check warn" in err


@pytest.mark.parametrize("extra,message", [
    ([], "give either a CHECKPOINT"),
    (["--model-factory", "usernets_i22"], "MODULE:FACTORY"),
    (["--model-factory", "no_such_module_i22:f", "--data", "mnist5k"], "cannot import"),
    (["--model-factory", "usernets_i22:nothing", "--data", "mnist5k"], "no callable 'nothing'"),
    (["--model-factory", "usernets_i22:make_net"], "needs data"),
    (["--model-factory", "usernets_i22:make_net", "--weights", "WRONG", "--data", "mnist5k"],
     "does not fit"),
    (["--torchscript", "missing.ts", "--data", "mnist5k"], "file not found"),
])
def test_eig_user_model_errors_name_the_option(user, capsys, extra, message):
    tmp, *_ = user
    if "WRONG" in extra:
        torch.save({"other.weight": torch.zeros(2)}, tmp / "wrong.pt")
        extra = [str(tmp / "wrong.pt") if a == "WRONG" else a for a in extra]
    assert main(["eig", *extra]) == 2
    assert message in capsys.readouterr().err
