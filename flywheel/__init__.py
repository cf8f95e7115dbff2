"""flywheel: an event-driven feedback data flywheel for LLM products.

Stages live in subpackages: `flywheel.schemas` (event contract), `flywheel.streams` (SDK, landing worker),
`flywheel.warehouse` (lake and DuckDB views), `flywheel.flows` (Prefect flows), `flywheel.infra` (embedded broker).
"""

from flywheel.config import Settings
from flywheel.errors import FlywheelError

__version__ = "0.1.0"
__all__ = ["Settings", "FlywheelError", "__version__"]
