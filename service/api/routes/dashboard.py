"""The cost dashboard: GET /dashboard (one HTML page) and its static files under
/static/reports/ (the page's script, its /favicon.ico and the vendored Chart.js UMD build: no CDN, works offline).

The page holds no data: it asks for the API key (kept in the tab's sessionStorage) and reads
/v1/reports/cost with it, so every figure is behind the same X-API-Key auth as the API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[2] / "reports" / "static"
STATIC_PATH = "/static/reports"


def install_dashboard(app: FastAPI) -> None:
    router = APIRouter(tags=["reports"])

    @router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "dashboard.html").read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-store"})

    @router.get("/dashboard/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(job_id: str) -> HTMLResponse:  # the page reads the job with the tab's key
        return HTMLResponse((STATIC / "job.html").read_text(encoding="utf-8"),
                            headers={"Cache-Control": "no-store"})

    # browsers ask for /favicon.ico on every page: a 404 there is a console error
    @router.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC), name="report-static")
