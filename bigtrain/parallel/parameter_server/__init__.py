"""Parameter-server training: sharded servers, BSP / ASP / SSP workers, sparse embedding rows.

Files, bottom up: `protocol.py` (the point-to-point messages), `sharding.py` (which server
holds which rows), `store.py` (a server's values, optimizers, versions, checkpoints),
`server.py` (a server's handler threads and clocks), `client.py` (a worker's pulls and
pushes), `config.py` (`PSConfig`, the checked settings), `strategy.py` (the `ParameterServer`
Strategy, registered as "ps", "ps_async", "ps_ssp").

Example:
    from bigtrain.parallel.parameter_server import ParameterServer
    model.fit(x, y, batch_size=64, devices=4,
              strategy=ParameterServer(servers=1, mode="ssp", staleness=2))
"""
from bigtrain.parallel.parameter_server.sharding import ShardPlan, build_plan
from bigtrain.parallel.parameter_server.strategy import MODES, ParameterServer, PSConfig

__all__ = ["MODES", "PSConfig", "ParameterServer", "ShardPlan", "build_plan"]
