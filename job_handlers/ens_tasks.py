"""The ENS tasks (issue 6), registered only when the worker has an Ethereum RPC endpoint: a
worker without ETH_RPC_URL does not serve the ens-sync queue, whose jobs then wait."""

from __future__ import annotations

import logging

from procrastinate import App
from procrastinate.retry import BaseRetryStrategy

from job_handlers import ens_sync, reconcile
from job_handlers.chain.access import Chain
from job_handlers.settings import WorkerSettings

log = logging.getLogger(__name__)


def register(app: App, settings: WorkerSettings, retry: BaseRetryStrategy) -> None:
    if not settings.eth_rpc_url:
        log.info("ETH_RPC_URL is not set: sync-ens-data, schedule-daily-ens-sync and "
                 "reconcile-ownership are off (ens-sync jobs stay queued)")
        return
    chain = Chain(settings)
    ens_sync.register(app, settings, chain, retry)
    reconcile.register(app, settings, chain)
