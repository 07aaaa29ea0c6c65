"""Hypernetwork config, modules and files without a UNet: A1111's layout, round trips, refusals."""

from __future__ import annotations

import argparse
import inspect
import itertools
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tsuika.formats.a1111_hypernetwork import (
    HypernetworkFileError,
    HypernetworkStructure,
    load_hypernetwork_file,
    parse_dropout_structure,
    save_a1111_hypernetwork,
    save_safetensors_hypernetwork,
)
from tsuika.methods.hypernetwork import (
    ACTIVATIONS,
    INITIALIZATIONS,
    Hypernetwork,
    HypernetworkConfig,
    HypernetworkModule,
)

# --- an independent re-implementation of A1111's HypernetworkModule construction ------------
# (modules/hypernetworks/hypernetwork.py): per pair of layer_structure entries a Linear,
# then the activation (not after the last Linear unless activate_output; none for "linear"
# or None), then a LayerNorm when add_layer_norm, then a Dropout when dropout_structure[i+1] > 0.

A1111_ACTIVATIONS = {
    "linear": torch.nn.Identity,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
}
A1111_ACTIVATIONS.update(
    {
        name.lower(): cls
        for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
        if cls.__module__ == "torch.nn.modules.activation"
    }
)


class A1111Module(torch.nn.Module):
    def __init__(self, dim, layer_structure, activation_func, add_layer_norm, activate_output, ds):
        super().__init__()
        layers = []
        n = len(layer_structure)
        for i in range(n - 1):
            layers.append(
                torch.nn.Linear(int(dim * layer_structure[i]), int(dim * layer_structure[i + 1]))
            )
            if activation_func == "linear" or activation_func is None:
                pass
            elif i >= n - 2 and not activate_output:
                pass
            else:
                layers.append(A1111_ACTIVATIONS[activation_func]())
            if add_layer_norm:
                layers.append(torch.nn.LayerNorm(int(dim * layer_structure[i + 1])))
            if ds is not None and ds[i + 1] > 0:
                layers.append(torch.nn.Dropout(p=ds[i + 1]))
        self.linear = torch.nn.Sequential(*layers)
        self.multiplier = 1.0

    def forward(self, x):
        return x + self.linear(x) * self.multiplier


def a1111_from_file_dict(data, dim, side):
    """Build one module the way A1111's ``Hypernetwork.load`` does, and load it strictly."""
    ls = data.get("layer_structure", [1, 2, 1])
    ds = data.get("dropout_structure") or parse_dropout_structure(
        ls, data.get("use_dropout", False), data.get("last_layer_dropout", False)
    )
    module = A1111Module(
        dim,
        ls,
        data.get("activation_func"),
        data.get("is_layer_norm", False),
        data.get("activate_output", True),
        ds,
    )
    module.load_state_dict(data[dim][side], strict=True)
    return module.eval()


def _randomize(net: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _net(config: HypernetworkConfig, dims=(8, 12), seed=0) -> Hypernetwork:
    net = Hypernetwork(dims, config.structure())
    net.initialize(config.initialization)
    _randomize(net, seed)
    return net.eval()


STRUCTURES = [
    dict(activation="linear"),
    dict(activation="relu", layer_norm=True),
    dict(activation="swish", activate_output=True),
    dict(activation="mish", layer_norm=True, dropout=True, layer_structure=[1, 2, 2, 1]),
    dict(activation="gelu", dropout=0.1, last_layer_dropout=True),
    dict(activation="leakyrelu", layer_structure=[1, 1.5, 1]),
    dict(activation="sigmoid", layer_norm=True, activate_output=True),
    dict(activation="elu", dropout=True, layer_structure=[1, 2, 2, 1], last_layer_dropout=False),
]


# --- config -------------------------------------------------------------------------------


def test_config_defaults_follow_the_design():
    cfg = HypernetworkConfig()
    assert cfg.dims == (768, 320, 640, 1280)
    assert cfg.layer_structure == (1, 2, 1)
    assert cfg.structure().dropout_structure == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"rank": 4}, "rank"),
        ({"layer_structure": [2, 2, 1]}, "method.layer_structure"),
        ({"layer_structure": [1, 0, 1]}, "method.layer_structure"),
        ({"layer_structure": "1,2,1"}, "method.layer_structure"),
        ({"activation": "softmax2d"}, "method.activation"),
        ({"initialization": "Orthogonal"}, "method.initialization"),
        ({"dropout": 1.5}, "method.dropout"),
        ({"dropout": "yes"}, "method.dropout"),
        ({"dropout": True, "last_layer_dropout": False}, "method.dropout"),
        ({"dims": [320, 320]}, "method.dims"),
        ({"dims": [0]}, "method.dims"),
        ({"dims": "all"}, "method.dims"),
        ({"layer_norm": "no"}, "method.layer_norm"),
        ({"activation": "sigmoid", "activate_output": True}, "method.activate_output"),
    ],
)
def test_config_errors_name_the_field(table, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        HypernetworkConfig.from_dict(table)


def test_config_normalizes_names_and_dropout():
    cfg = HypernetworkConfig.from_dict(
        {"activation": "ReLU", "initialization": "xavieruniform", "dropout": 0.2}
    )
    assert (cfg.activation, cfg.initialization) == ("relu", "XavierUniform")
    assert cfg.structure().dropout_structure == (0.0, 0.2, 0.0)
    on = HypernetworkConfig(dropout=True, layer_structure=[1, 2, 2, 1], last_layer_dropout=False)
    assert on.structure().dropout_structure == (0.0, 0.3, 0.0, 0.0)
    assert HypernetworkConfig.from_dict(on.to_dict()) == on


def test_resolve_dims():
    assert HypernetworkConfig(dims="auto").resolve_dims([64, 32, 32]) == [32, 64]
    assert HypernetworkConfig(dims=[64, 32]).resolve_dims([32, 64, 128]) == [32, 64]
    with pytest.raises(ValueError, match=r"method\.dims: \[768\].*\[32, 64\]"):
        HypernetworkConfig(dims=[768, 32]).resolve_dims([32, 64])


@pytest.mark.parametrize(
    ("ls", "use", "last", "expected"),
    [
        ([1, 2, 1], False, True, [0, 0, 0]),
        ([1, 2, 1], True, False, [0, 0, 0]),
        ([1, 2, 1], True, True, [0, 0.3, 0]),
        ([1, 2, 2, 1], True, False, [0, 0.3, 0, 0]),
        ([1, 2, 2, 1], True, True, [0, 0.3, 0.3, 0]),
        ([1, 4, 2, 2, 1], True, True, [0, 0.3, 0.3, 0.3, 0]),
    ],
)
def test_dropout_structure_as_a1111_derives_it(ls, use, last, expected):
    assert parse_dropout_structure(ls, use, last) == expected


# --- modules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("activation", "initialization", "layer_norm"),
    list(itertools.product(ACTIVATIONS, INITIALIZATIONS, [False, True])),
)
def test_untrained_module_is_the_identity(activation, initialization, layer_norm):
    cfg = HypernetworkConfig(
        activation=activation,
        initialization=initialization,
        layer_norm=layer_norm,
        activate_output=activation != "sigmoid" or layer_norm,
        layer_structure=[1, 2, 2, 1],
    )
    torch.manual_seed(0)
    module = HypernetworkModule(16, cfg.structure())
    module.initialize(cfg.initialization)
    x = torch.randn(3, 5, 16)
    for training in (True, False):
        module.train(training)
        assert torch.equal(module(x), x)
    # only the last parametrised layer is zero; the others are initialised
    params = [m for m in module.linear if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))]
    assert not params[-1].weight.any() and not params[-1].bias.any()
    assert all(p.weight.abs().sum() > 0 for p in params[:-1])


def test_strength_scales_the_delta_in_eval_and_training_uses_one():
    net = _net(HypernetworkConfig(activation="relu"))
    k, _ = net.pair(8)
    x = torch.randn(2, 4, 8)
    delta = k(x) - x
    assert delta.abs().max() > 1e-3
    for s in (0.0, 0.5, 2.0):
        net.strength = s
        torch.testing.assert_close(k(x) - x, s * delta, rtol=1e-5, atol=1e-6)
    net.strength = 0.0
    assert torch.equal(k(x), x)
    k.train()
    torch.testing.assert_close(k(x) - x, delta)  # A1111: multiplier 1 while training


@pytest.mark.parametrize("options", STRUCTURES, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("fmt", ["a1111", "safetensors"])
def test_file_builds_strictly_in_a1111_modules(tmp_path, options, fmt):
    """Our file, built the way A1111 builds modules, loads with strict=True and computes
    the same thing as our modules."""
    cfg = HypernetworkConfig.from_dict(options)
    net = _net(cfg)
    hf = _file(net, cfg)
    if fmt == "a1111":
        path = save_a1111_hypernetwork(tmp_path / "h.pt", hf)
        data = torch.load(path, weights_only=True)
    else:
        path = save_safetensors_hypernetwork(tmp_path / "h.safetensors", hf)
        data = _a1111_dict_from_safetensors(path)
    x = torch.randn(2, 7, 8)
    for side, ours in enumerate(net.pair(8)):
        theirs = a1111_from_file_dict(data, 8, side)
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=0)
    back = Hypernetwork.from_file(load_hypernetwork_file(path)).eval()
    assert back.structure == net.structure
    for key, value in net.flat_state().items():
        assert torch.equal(back.flat_state()[key], value), key


def _a1111_dict_from_safetensors(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    data = {k: json.loads(header[k]) for k in ("layer_structure", "activation_func")}
    for key in ("is_layer_norm", "activate_output", "dropout_structure"):
        data[key] = json.loads(header[key])
    for name, tensor in load_file(str(path)).items():
        dim, side, key = name.split(".", 2)
        data.setdefault(int(dim), ({}, {}))["kv".index(side)][key] = tensor
    return data


def _file(net: Hypernetwork, cfg: HypernetworkConfig, **fields):
    from tsuika.formats.a1111_hypernetwork import HypernetworkFile

    return HypernetworkFile(
        structure=net.structure,
        layers=net.module_states(),
        weight_initialization=cfg.initialization,
        use_dropout=cfg.dropout_rate > 0,
        last_layer_dropout=net.structure.dropout_structure[-2] > 0,
        step=7,
        name="test",
        **fields,
    )


def test_pt_holds_a1111_fields_and_loads_with_weights_only(tmp_path):
    cfg = HypernetworkConfig(activation="relu", layer_norm=True, dropout=True)
    net = _net(cfg)
    path = save_a1111_hypernetwork(tmp_path / "h.pt", _file(net, cfg, sd_checkpoint_name="base"))
    data = torch.load(path, weights_only=True)
    assert [k for k in data if isinstance(k, int)] == [8, 12]
    k_state, v_state = data[12]
    assert sorted(k_state) == sorted(v_state)
    assert sorted(k_state) == [f"linear.{i}.{p}" for i in (0, 2, 4, 5) for p in ("bias", "weight")]
    expected = {
        "layer_structure": [1, 2, 1],
        "activation_func": "relu",
        "is_layer_norm": True,
        "weight_initialization": "Normal",
        "activate_output": False,
        "use_dropout": True,
        "dropout_structure": [0.0, 0.3, 0.0],
        "last_layer_dropout": True,
        "step": 7,
        "name": "test",
        "sd_checkpoint": None,
        "sd_checkpoint_name": "base",
    }
    assert {k: data[k] for k in expected} == expected
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_old_style_linear1_linear2_file_loads(tmp_path):
    """Files from before the Sequential layout: two Linear layers named linear1 / linear2 and
    no structure fields (A1111 defaults: [1, 2, 1], no activation)."""
    gen = torch.Generator().manual_seed(3)

    def state():
        return {
            "linear1.weight": torch.randn(16, 8, generator=gen),
            "linear1.bias": torch.randn(16, generator=gen),
            "linear2.weight": torch.randn(8, 16, generator=gen),
            "linear2.bias": torch.randn(8, generator=gen),
        }

    data = {8: (state(), state())}
    torch.save(data, tmp_path / "old.pt")
    hf = load_hypernetwork_file(tmp_path / "old.pt")
    assert hf.structure.layer_structure == (1, 2, 1)
    assert hf.structure.activation is None
    net = Hypernetwork.from_file(hf).eval()
    x = torch.randn(3, 8, generator=gen)
    for side, module in enumerate(net.pair(8)):
        s = data[8][side]
        hidden = x @ s["linear1.weight"].T + s["linear1.bias"]
        expected = x + hidden @ s["linear2.weight"].T + s["linear2.bias"]
        torch.testing.assert_close(module(x), expected)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda t: t.__setitem__((0, 0), float("nan")), r"12\.k.*linear\.0\.weight.*NaN"),
        (lambda t: t.__setitem__((1, 1), float("inf")), r"12\.k.*linear\.0\.weight.*infinite"),
        (lambda t: None, None),  # replaced below by a wrong shape
    ],
)
def test_corrupted_file_is_refused_naming_the_key(tmp_path, fmt, corrupt, message):
    cfg = HypernetworkConfig(activation="relu")
    net = _net(cfg)
    hf = _file(net, cfg)
    k_state = {key: t.clone() for key, t in hf.layers[12][0].items()}
    if message is None:
        k_state["linear.2.weight"] = torch.zeros(12, 23)
        message = r"layer 12 k: linear\.2\.weight has shape \(12, 23\), expected \(12, 24\)"
    else:
        corrupt(k_state["linear.0.weight"])
        message = message.replace(r"12\.k", "layer 12 k")
    hf.layers[12] = (k_state, hf.layers[12][1])
    save = save_a1111_hypernetwork if fmt == "pt" else save_safetensors_hypernetwork
    path = save(tmp_path / f"bad.{fmt}", hf)
    with pytest.raises(HypernetworkFileError, match=message):
        load_hypernetwork_file(path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    cfg = HypernetworkConfig()
    net = _net(cfg)
    tensors = net.flat_state()
    tensors["8.v.linear.5.weight"] = tensors.pop("8.v.linear.1.weight")
    header = {"layer_structure": "[1, 2, 1]", "activation_func": '"linear"'}
    save_file(tensors, tmp_path / "h.safetensors", metadata=header)
    with pytest.raises(HypernetworkFileError, match=r"layer 8 v.*linear\.1\.weight.*linear\.5"):
        load_hypernetwork_file(tmp_path / "h.safetensors")
    save_file({"8.q.linear.0.weight": torch.zeros(1)}, tmp_path / "q.safetensors")
    with pytest.raises(HypernetworkFileError, match=r"8\.q\.linear\.0\.weight"):
        load_hypernetwork_file(tmp_path / "q.safetensors")


def test_pickle_with_objects_is_refused(tmp_path):
    torch.save({8: ({}, {}), "args": argparse.Namespace(lr=1)}, tmp_path / "evil.pt")
    with pytest.raises(HypernetworkFileError, match=r"evil\.pt: refused.*weights_only=True"):
        load_hypernetwork_file(tmp_path / "evil.pt")


def test_other_refusals(tmp_path):
    (tmp_path / "h.ckpt").write_bytes(b"x")
    with pytest.raises(HypernetworkFileError, match="unknown hypernetwork file type '.ckpt'"):
        load_hypernetwork_file(tmp_path / "h.ckpt")
    with pytest.raises(FileNotFoundError):
        load_hypernetwork_file(tmp_path / "none.pt")
    torch.save({"layer_structure": [1, 2, 1]}, tmp_path / "empty.pt")
    with pytest.raises(HypernetworkFileError, match="no layers"):
        load_hypernetwork_file(tmp_path / "empty.pt")
    torch.save({8: ({}, {}), "layer_structure": [2, 1]}, tmp_path / "ls.pt")
    with pytest.raises(HypernetworkFileError, match="layer_structure must start and end with 1"):
        load_hypernetwork_file(tmp_path / "ls.pt")
    torch.save({"8": ({}, {})}, tmp_path / "strkey.pt")
    with pytest.raises(HypernetworkFileError, match="no layers"):
        load_hypernetwork_file(tmp_path / "strkey.pt")


def test_structure_validation():
    with pytest.raises(ValueError, match="dropout_structure"):
        HypernetworkStructure((1, 2, 1), "relu", False, False, (0.0, 0.3, 0.3))
    with pytest.raises(ValueError, match="one entry per layer_structure"):
        HypernetworkStructure((1, 2, 1), "relu", False, False, (0.0, 0.0))


def test_load_module_states_is_strict():
    cfg = HypernetworkConfig(activation="tanh")
    net, other = _net(cfg), _net(cfg, seed=1)
    state = other.flat_state()
    net.load_flat_state(state, "state")
    assert all(torch.equal(net.flat_state()[k], v) for k, v in state.items())
    with pytest.raises(HypernetworkFileError, match=r"widths \[8\] do not match .*\[8, 12\]"):
        net.load_flat_state({k: v for k, v in state.items() if k.startswith("8.")}, "state")
    state["12.v.linear.2.bias"] = torch.zeros(13)
    with pytest.raises(HypernetworkFileError, match=r"state: 12\.v: linear\.2\.bias has shape"):
        net.load_flat_state(state, "state")


def test_file_activations_beyond_ours_follow_a1111(tmp_path):
    """A1111 accepts any torch activation class by lower-cased name; so do we, for files."""
    structure = HypernetworkStructure((1, 2, 1), "softplus", False, True, (0.0, 0.0, 0.0))
    module = HypernetworkModule(8, structure)
    assert [type(m).__name__ for m in module.linear] == ["Linear", "Softplus", "Linear", "Softplus"]
    data = {"activation_func": "softplus", "activate_output": True}
    data[8] = (module.state_dict(), module.state_dict())
    torch.save(data, tmp_path / "softplus.pt")
    net = Hypernetwork.from_file(load_hypernetwork_file(tmp_path / "softplus.pt"))
    x = torch.randn(2, 8)
    torch.testing.assert_close(net.pair(8)[0](x), a1111_from_file_dict(data, 8, 0)(x))
    data["activation_func"] = "nosuchthing"
    torch.save(data, tmp_path / "unknown.pt")
    with pytest.raises(HypernetworkFileError, match="activation_func.*'nosuchthing'"):
        Hypernetwork.from_file(load_hypernetwork_file(tmp_path / "unknown.pt"))
