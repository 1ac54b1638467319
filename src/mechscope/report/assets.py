"""The report's inline stylesheet and script (kept here so the HTML builder reads as structure).

The script filters latent dashboards: a query of digits (optionally after ``#``) matches that latent
index; any other text matches the text of the latent's top contexts (case-insensitive). The query
lives in the URL fragment as ``#q=<query>``, so a filtered view can be linked, and a headless browser
given such a URL shows the filtered page.
"""

CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#dde1e8; --bg:#f6f7f9; --card:#fff; --hi:#ffb347; --bad:#c44e52; --good:#3b8c5a; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header { padding:18px 28px 10px; background:#1d2330; color:#fff; }
header h1 { margin:0 0 4px; font-size:20px; }
header .sub { color:#b8c0cf; font-size:12px; }
nav { padding:6px 28px; background:#2a3142; font-size:13px; }
nav a { color:#cfd6e4; margin-right:16px; text-decoration:none; }
main { padding:8px 28px 40px; max-width:1500px; }
h2 { margin:26px 0 10px; font-size:17px; border-bottom:1px solid var(--line); padding-bottom:4px; }
table { border-collapse:collapse; background:var(--card); font-size:13px; }
th, td { border:1px solid var(--line); padding:3px 9px; text-align:left; vertical-align:top; }
th { background:#eef0f4; font-weight:600; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
.note { color:var(--muted); font-size:12px; max-width:1000px; }
.verdict { margin:10px 0; padding:8px 12px; border-left:4px solid var(--good); background:#eef7f1; max-width:1000px; }
.verdict.bad { border-color:var(--bad); background:#fbeeee; }
.figs { display:flex; flex-wrap:wrap; gap:16px; }
figure { margin:0; background:var(--card); border:1px solid var(--line); padding:8px; }
figure img { display:block; max-width:100%; height:auto; }
figcaption { color:var(--muted); font-size:12px; margin-top:4px; max-width:640px; }
.search { position:sticky; top:0; z-index:2; background:var(--bg); padding:8px 0; display:flex; gap:12px; align-items:center; }
.search input { font-size:14px; padding:6px 10px; width:380px; border:1px solid #b9c0cc; border-radius:4px; }
.search .count { color:var(--muted); font-size:13px; }
.latents { display:grid; grid-template-columns:repeat(auto-fill,minmax(460px,1fr)); gap:14px; }
.latent { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:10px 12px; min-width:0; }
.latent[hidden] { display:none; }
.latent h3 { margin:0 0 2px; font-size:15px; }
.latent .badge { font-size:11px; color:#fff; background:#6c7a93; border-radius:3px; padding:1px 5px; margin-left:6px; vertical-align:middle; }
.latent .stats { color:var(--muted); font-size:12px; margin-bottom:6px; }
.row { display:flex; gap:14px; align-items:flex-start; }
.logits { font-size:12px; flex:1; min-width:0; }
.logits .up b { color:var(--good); } .logits .down b { color:var(--bad); }
.tok { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; white-space:pre; background:#f0f2f5; border-radius:2px; padding:0 2px; margin:0 1px; }
.ctxs { margin-top:6px; font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px; }
.ctx { white-space:pre; overflow:hidden; text-overflow:ellipsis; border-top:1px dotted var(--line); padding:1px 0; }
.ctx .v { display:inline-block; width:56px; color:var(--muted); text-align:right; margin-right:6px; }
.ctx mark { background:var(--hi); font-weight:700; border-radius:2px; }
.ctx .dim { color:#8a93a3; }
svg.hist rect { fill:#4c72b0; }
svg.hist text { font-size:9px; fill:#5b6475; }
"""

JS = r"""
(function () {
  var box = document.getElementById('latent-search');
  var count = document.getElementById('latent-count');
  var cards = Array.prototype.slice.call(document.querySelectorAll('.latent'));
  function matches(card, q) {
    if (!q) return true;
    var m = q.match(/^#?(\d+)$/);
    if (m && card.getAttribute('data-latent') === m[1]) return true;
    if (q.charAt(0) === '#') return false;
    return (card.getAttribute('data-text') || '').indexOf(q) >= 0;
  }
  function apply(raw) {
    var q = (raw || '').trim().toLowerCase(), shown = 0;
    cards.forEach(function (c) { var ok = matches(c, q); c.hidden = !ok; if (ok) shown++; });
    count.textContent = shown + ' of ' + cards.length + ' latents shown';
    document.body.setAttribute('data-shown', String(shown));
  }
  function fromHash() {
    var m = location.hash.match(/[#&]q=([^&]*)/);
    return m ? decodeURIComponent(m[1].replace(/\+/g, ' ')) : '';
  }
  if (box) {
    box.addEventListener('input', function () {
      apply(box.value);
      history.replaceState(null, '', '#q=' + encodeURIComponent(box.value));
    });
    window.addEventListener('hashchange', function () { box.value = fromHash(); apply(box.value); });
    box.value = fromHash();
    apply(box.value);
    // A shared link with a query should open on the dashboards it filters.
    if (box.value) { var sec = document.getElementById('latents'); if (sec) sec.scrollIntoView(); }
  }
  document.body.setAttribute('data-ready', '1');
})();
"""
