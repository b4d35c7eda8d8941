"""The layout's rules, checked on the source: `service` never imports `workers`, routes build no
sessions, LitServe's private API is reached from one module, pinned to one LitServe version."""

import ast
import re
from pathlib import Path

import litserve

from service.api.litserve import SUPPORTED_LITSERVE

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
OVERRIDES = SERVICE / "api" / "litserve.py"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_litserve_is_the_version_the_overrides_were_written_for():
    assert litserve.__version__ == SUPPORTED_LITSERVE, (
        f"litserve {litserve.__version__} is installed; service/api/litserve.py overrides private "
        f"methods of {SUPPORTED_LITSERVE}: re-check each one, then raise SUPPORTED_LITSERVE")
    lock = (ROOT / "requirements.txt").read_text()
    assert f"\nlitserve=={SUPPORTED_LITSERVE}\n" in lock


def test_litserve_private_api_is_used_in_one_module():
    private_names = re.compile(r"\b(_init_manager|_register_api_endpoints|_prepare_request|"
                               r"get_batch_requests|_SENTINEL_VALUE|_StopLoopError|_transport|"
                               r"_callback_runner|workers_setup_status)\b")
    for path in SERVICE.rglob("*.py"):
        if path == OVERRIDES:
            continue
        found = private_names.findall(path.read_text())
        assert not found, f"{path.relative_to(ROOT)} reaches into LitServe: {found}"
        litserve_imports = {m for m in imported_modules(path) if m.startswith("litserve.")}
        assert not litserve_imports, f"{path.relative_to(ROOT)} imports {litserve_imports}"


def test_service_never_imports_workers():
    for path in SERVICE.rglob("*.py"):
        bad = {m for m in imported_modules(path) if m == "workers" or m.startswith("workers.")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_routes_take_their_session_as_a_dependency():
    for path in (SERVICE / "api" / "routes").glob("*.py"):
        text = path.read_text()
        assert "session_factory" not in text and "session_scope" not in text, path.name
        assert "SQLAlchemyError" not in text, f"{path.name}: map errors in service/api/errors.py"


def test_job_status_changes_only_in_the_repository():
    # `status=` assignments of the state machine appear in the repository alone
    pattern = re.compile(r"(\.status\s*=[^=]|status=JobStatus\.)")
    for path in list(SERVICE.rglob("*.py")) + list((ROOT / "workers").rglob("*.py")):
        if path.name == "repository.py":
            continue
        assert not pattern.search(path.read_text()), f"{path.relative_to(ROOT)} changes a status"
