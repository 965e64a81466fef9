"""Peers: other libraries' algorithms run on qtkit's data, budgets and evaluation (``pip install 'qtkit[bench]'``).

>>> from qtkit.peers import fit_peer, list_peers
>>> list_peers()
['d3rlpy-dt', 'd3rlpy-iql', 'd3rlpy-td3bc']
>>> summary = fit_peer("d3rlpy-iql", dataset, steps=1000, eval_env=dataset, log_dir="runs/iql")  # doctest: +SKIP

Importing this package does not import d3rlpy; it loads when a peer is built or trained.
"""

from qtkit.peers.convert import mdp_arrays, to_mdp_dataset
from qtkit.peers.d3rlpy_runners import PEERS, Peer, fit_peer, get_peer, list_peers, require_d3rlpy, resolve_peer_params
from qtkit.peers.evaluation import evaluate_actor

__all__ = [
    "PEERS",
    "Peer",
    "evaluate_actor",
    "fit_peer",
    "get_peer",
    "list_peers",
    "mdp_arrays",
    "require_d3rlpy",
    "resolve_peer_params",
    "to_mdp_dataset",
]
