"""HTML pages for people, served by the gateway itself: the fleet, one GPU, usage, the pipeline.

Rendered on the server (``html`` escapes by default, ``charts`` draws inline SVG); no asset is
fetched from anywhere, and the one script refreshes and signs in (``layout``). With authentication
on, the pages take the API token from an HttpOnly cookie set once by the token prompt.
"""

from __future__ import annotations

from pipeline.gateway.pages.pipeline_page import PipelineView
from pipeline.gateway.pages.routes import PAGE_ACCESS, is_page, page_router

__all__ = ["PAGE_ACCESS", "PipelineView", "is_page", "page_router"]
