"""/docs from local files: Swagger UI vendored in service/api/static/swagger-ui (see its README).

FastAPI's default /docs page (and /redoc) loads its script and style from a CDN, so it was
blank on a network without internet. The app LitServe builds registers those routes itself;
they are replaced here by the same page pointing at /docs-assets, served by this API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).with_name("static") / "swagger-ui"
ASSETS_PATH = "/docs-assets"
REPLACED = {"/docs", "/docs/oauth2-redirect", "/redoc"}


def install_docs(app: FastAPI) -> None:
    from service.api.openapi_contract import install_contract
    from service.core.settings import get_settings

    def metrics_key_set() -> bool:
        key = get_settings().api.metrics_key
        return key is not None and bool(key.get_secret_value())

    # the shared error answers, declared once; inputs as this deployment's settings allow
    install_contract(app, metrics_key_set, get_settings)
    app.router.routes[:] = [r for r in app.router.routes
                            if getattr(r, "path", None) not in REPLACED]
    app.docs_url = app.redoc_url = None
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} - API docs",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
            # no call to the public validator either
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
