"""``knowscope info``: architecture, layers, heads, parameters, device and cache path of a model."""

from __future__ import annotations

import argparse
from typing import Any

from knowscope.commands import add_model_argument, load_from_args

NAME = "info"
HELP = "describe a model: architecture, layers, heads, parameters, device, cache path"
ORDER = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_from_args(args)
    info = model.info()
    a = info["architecture"]
    print(f"model        {info['name']}  ({info['path'] or 'hub'})")
    print(f"architecture {a['family']}  layers={a['n_layers']}  heads={a['n_heads']} (kv {a['n_kv_heads']})  "
          f"d_model={a['d_model']}  d_mlp={a['d_mlp']}  vocab={a['d_vocab']}")
    print(f"mlp output   {a['mlp_out_example']} (layout {a['mlp_out_layout']})")
    print(f"parameters   {info['parameters']:,}")
    print(f"device       {info['device']} ({info['dtype']})")
    print(f"fingerprint  {info['fingerprint']}")
    print(f"cache        {info['cache']}")
    return info
