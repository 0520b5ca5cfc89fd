"""The pages' shell: one document layout, its CSS and script (inline, hashed into the CSP), HTML responses.

Nothing is fetched from anywhere: the CSS and the script are part of each document and the
Content-Security-Policy allows exactly those two (by their SHA-256), same-origin requests and
forms, and nothing else — no external script, style, font, image or frame, and no other inline
script, so markup that slipped through escaping still could not run. The script only refreshes the
page's ``<main>`` (paused while the reader is in it or asks for a pause), adds local times beside
UTC ones, and sends the token prompt's token in an ``Authorization`` header (never in a URL).
"""

from __future__ import annotations

import base64
import hashlib

from starlette.responses import Response

from pipeline.gateway.pages.html import Markup, Node, el, join, void

__all__ = ["CSP", "HEADERS", "NAV", "document", "html_response", "message_page"]

CSS = """
:root{--bg:#ffffff;--fg:#1b1c20;--muted:#585c66;--line:#d5d8de;--panel:#f4f5f7;--link:#0b57d0;--focus:#d55e00;
--mark-bg:#ffffff;--mark-ink:#3a3a3a;color-scheme:light dark}
@media (prefers-color-scheme: dark){:root{--bg:#15161a;--fg:#e9e9ec;--muted:#a9adb6;--line:#3a3e46;
--panel:#1f2126;--link:#8ab4f8;--mark-bg:#26282d;--mark-ink:#d0d0d0}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);
color:var(--fg)}
a{color:var(--link)}
a:focus-visible,button:focus-visible,input:focus-visible,select:focus-visible{outline:3px solid var(--focus);
outline-offset:2px}
.skip{position:absolute;left:-9999px}.skip:focus{left:8px;top:8px;background:var(--panel);padding:4px 8px}
header{display:flex;flex-wrap:wrap;gap:16px;align-items:center;padding:8px 16px;border-bottom:1px solid var(--line);
background:var(--panel)}
header nav a{margin-right:14px;font-weight:600;text-decoration:none}
header nav a[aria-current=page]{text-decoration:underline;text-underline-offset:4px}
header .right{margin-left:auto;display:flex;gap:14px;align-items:center;color:var(--muted)}
main{padding:12px 16px 32px;max-width:1200px}
h1{font-size:20px;margin:8px 0 12px}h2{font-size:16px;margin:22px 0 8px}
.counts{display:flex;flex-wrap:wrap;gap:10px;margin:0;padding:0}
.counts div{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:6px 12px;min-width:96px}
.counts dt{color:var(--muted);font-size:12px}.counts dd{margin:0;font-size:20px;font-weight:600}
.facts dd{font-size:15px}figure{margin:0}figcaption{font-weight:600;margin:8px 0 2px}
table{border-collapse:collapse;margin:4px 0 8px}
th,td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left}
th{font-weight:600;color:var(--muted)}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cols{display:flex;flex-wrap:wrap;gap:28px}
form.inline{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:8px 0}
.note{color:var(--muted)}.bad{color:#d55e00;font-weight:600}
.local{color:var(--muted)}
.chart{display:block;max-width:100%;height:auto;overflow:visible}
.chart text{fill:var(--fg);font-size:11px}.chart .tick{fill:var(--muted)}
.axis{stroke:var(--muted)}.gridline{stroke:var(--line)}
.mark-bg{fill:var(--mark-bg)}.mark-ink{stroke:var(--mark-ink)}.mark-dot{fill:var(--mark-ink)}
.cell.empty{stroke:var(--line)}
a:focus .cell,a:hover .cell{stroke:var(--focus);stroke-width:3}
.pager a{margin-right:12px}
.prompt{max-width:520px}.prompt input{width:100%;padding:6px;font:inherit}
""".strip()

JS = """
(function(){'use strict';
function pad(n){return String(n).padStart(2,'0');}
function offset(d){var m=-d.getTimezoneOffset(),s=m<0?'-':'+';m=Math.abs(m);
return s+pad(Math.floor(m/60))+':'+pad(m%60);}
function localize(root){root.querySelectorAll('time[datetime]').forEach(function(t){
if(t.nextElementSibling&&t.nextElementSibling.className==='local')return;
var d=new Date(t.getAttribute('datetime'));if(isNaN(d))return;var s=document.createElement('span');
s.className='local';
s.textContent=' ('+d.getFullYear()+'-'+pad(d.getMonth()+1)+'-'+pad(d.getDate())+' '+pad(d.getHours())+':'+
pad(d.getMinutes())+' local)';t.after(s);});
var z=document.getElementById('tz');if(z)z.textContent='Times in UTC; your offset is UTC'+offset(new Date());}
localize(document);
var form=document.getElementById('login');
if(form){form.addEventListener('submit',function(e){e.preventDefault();var msg=document.getElementById('login-msg');
var token=form.elements.token.value.trim();if(!token){msg.textContent='Enter a token.';return;}
fetch('/login',{method:'POST',credentials:'same-origin',headers:{
'Authorization':'Bearer '+token}}).then(function(r){
if(r.ok){form.elements.token.value='';location.reload();return;}
msg.textContent=r.status===403?'That token does not grant the read scope.':'That token was not accepted.';
form.elements.token.focus();}).catch(function(){msg.textContent='The gateway did not answer.';});});}
var main=document.querySelector('main[data-refresh]');var pause=document.getElementById('pause');
if(main){var every=Math.max(2,parseInt(main.getAttribute('data-refresh'),10)||10)*1000;
setInterval(function(){if(document.hidden||(pause&&pause.checked)||main.contains(document.activeElement))return;
fetch(location.href,{credentials:'same-origin'}).then(function(r){if(!r.ok)return null;return r.text();
}).then(function(text){
if(!text)return;var doc=new DOMParser().parseFromString(text,'text/html');var fresh=doc.querySelector('main');
if(!fresh||main.contains(document.activeElement))return;main.innerHTML=fresh.innerHTML;document.title=doc.title;
localize(main);}).catch(function(){});},every);}
})();
""".strip()


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    f"default-src 'none'; script-src {_sha256(JS)}; style-src {_sha256(CSS)}; img-src data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
NAV = (("/", "Fleet"), ("/usage", "Usage"), ("/pipeline", "Pipeline"))


def document(
    title: str,
    body: Node,
    current: str | None = None,
    refresh_s: int | None = None,
    signed_in: bool = False,
) -> Markup:
    """A whole page: the navigation (``current`` marked), ``body`` in ``<main>``, the CSS and script."""
    links = [el("a", {"href": path, "aria-current": "page" if path == current else None}, name) for path, name in NAV]
    right: list[Node] = [
        el("span", {"id": "tz"}, "Times in UTC"),
        el("label", None, void("input", {"type": "checkbox", "id": "pause"}), " pause refresh") if refresh_s else None,
    ]
    if signed_in:
        right.append(el("form", {"method": "post", "action": "/logout"}, el("button", {"type": "submit"}, "Sign out")))
    head = Markup(
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
    ) + join([el("title", None, f"{title} · GPU telemetry"), el("style", None, Markup(CSS))])
    page = el(
        "body",
        None,
        el("a", {"class": "skip", "href": "#main"}, "Skip to content"),
        el("header", None, el("nav", {"aria-label": "Pages"}, links), el("div", {"class": "right"}, right)),
        el("main", {"id": "main", "tabindex": "-1", "data-refresh": refresh_s}, body),
        el("script", None, Markup(JS)),
    )
    return Markup("<!doctype html>") + el("html", {"lang": "en"}, el("head", None, head), page)


def html_response(content: Markup, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """An HTML response with the pages' security headers."""
    return Response(
        content.encode(),
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers={**HEADERS, **(headers or {})},
    )


def message_page(status: int, title: str, detail: str, signed_in: bool = False) -> Response:
    """An error as a page: its title, what went wrong (escaped), and the way back."""
    body = [el("h1", None, title), el("p", None, detail), el("p", None, el("a", {"href": "/"}, "Back to the fleet"))]
    return html_response(document(title, body, signed_in=signed_in), status)
