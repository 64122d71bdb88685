/* Feature dashboard. Data enter the page only through JSON and are written with textContent
   (never as markup), so token strings and labels always render as text. Per-latent data load
   lazily from latents/<id>.js, which calls SAEDash.register (a <script> tag, since fetch()
   is refused for file:// pages). */
(function () {
  "use strict";
  var summary = JSON.parse(document.getElementById("summary-data").textContent);
  var cols = summary.columns, rows = summary.rows, meta = summary.meta;
  var C = {};
  cols.forEach(function (c, i) { C[c] = i; });
  var byId = {};
  rows.forEach(function (r) { byId[r[C.id]] = r; });
  var cache = {}, current = null;

  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "cls") node.className = attrs[k];
      else if (k === "title") node.title = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }
  function fmt(x, digits) {
    if (x === 0) return "0";
    var a = Math.abs(x);
    if (a >= 1e4 || a < 1e-3) return x.toExponential(2);
    return x.toPrecision(digits || 3);
  }
  function pct(f) { return f === 0 ? "0" : (f * 100 < 0.01 ? (f * 100).toExponential(1) : (f * 100).toPrecision(3)) + "%"; }
  function show(s) { return s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5"); }
  function chips(list) {
    var span = el("span");
    list.forEach(function (s) { span.appendChild(el("span", { cls: "chip", text: show(s) })); });
    return span;
  }
  var plotConfig = { displaylogo: false, responsive: true,
                     modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d", "toggleSpikelines"] };

  /* ---------- overview: scatter + table ---------- */
  function drawScatter() {
    var x = [], y = [], ids = [], text = [];
    rows.forEach(function (r) {
      if (r[C.freq] > 0 && r[C.mean] > 0) {
        x.push(r[C.freq]); y.push(r[C.mean]); ids.push(r[C.id]);
        text.push("latent " + r[C.id] + (r[C.label] ? "\n" + r[C.label] : ""));
      }
    });
    var div = document.getElementById("scatter");
    Plotly.newPlot(div, [{ type: "scatter", mode: "markers", x: x, y: y, customdata: ids, text: text,
      hovertemplate: "%{text}<br>density %{x:.2e}<br>mean act %{y:.3g}<extra></extra>",
      marker: { size: 5, color: "rgba(9,105,218,0.55)", line: { width: 0 } } }],
      { margin: { l: 60, r: 16, t: 10, b: 46 }, xaxis: { type: "log", title: { text: "firing density" } },
        yaxis: { type: "log", title: { text: "mean activation when firing" } }, hovermode: "closest" }, plotConfig);
    div.on("plotly_click", function (ev) { if (ev.points.length) open(ev.points[0].customdata); });
  }

  /* The table renders only the rows near the scrolled-to window (plus spacers of the right
     height), so 100k latents open as fast as 100: rows are built on first sight and kept. */
  var ROW_H = 30, MARGIN = 30;
  var tbody, wrap, sortKey = "id", sortDesc = false, haystack = {}, order = rows, view = rows, pending = false;
  function rowOf(r) {
    if (!r.tr) {
      r.tr = el("tr", { "data-id": String(r[C.id]) },
        el("td", { cls: "num", text: String(r[C.id]) }),
        el("td", { cls: "label", text: r[C.label] || "", title: r[C.label] || "" }),
        el("td", { cls: "num", text: pct(r[C.freq]) }),
        el("td", { cls: "num", text: fmt(r[C.mean]) }),
        el("td", { cls: "num", text: fmt(r[C.max]) }),
        el("td", { cls: "chips" }, chips(r[C.top_tokens])),
        el("td", { cls: "chips" }, chips(r[C.top_logits])));
      r.tr.addEventListener("click", function () { open(r[C.id]); });
    }
    return r.tr;
  }
  function spacer(n) {
    var tr = el("tr", { cls: "spacer" });
    tr.style.height = (n * ROW_H) + "px";
    return tr;
  }
  function drawRows() {
    pending = false;
    var height = wrap.clientHeight || window.innerHeight;
    var start = Math.max(0, Math.floor(wrap.scrollTop / ROW_H) - MARGIN);
    var end = Math.min(view.length, start + Math.ceil(height / ROW_H) + 2 * MARGIN);
    var frag = document.createDocumentFragment();
    if (start > 0) frag.appendChild(spacer(start));
    for (var i = start; i < end; i++) frag.appendChild(rowOf(view[i]));
    if (end < view.length) frag.appendChild(spacer(view.length - end));
    tbody.textContent = "";
    tbody.appendChild(frag);
  }
  function redraw() {
    if (!pending) { pending = true; window.requestAnimationFrame(drawRows); }
  }
  function buildTable() {
    tbody = document.querySelector("#latent-table tbody");
    wrap = document.querySelector(".table-wrap");
    rows.forEach(function (r) {
      haystack[r[C.id]] = [String(r[C.id]), r[C.label] || ""].concat(r[C.top_tokens], r[C.top_logits])
        .join("\u0000").toLowerCase();
    });
    document.querySelectorAll("#latent-table thead th").forEach(function (th) {
      th.addEventListener("click", function () { sortBy(th.getAttribute("data-key")); });
    });
    document.getElementById("search").addEventListener("input", filter);
    wrap.addEventListener("scroll", redraw);
    window.addEventListener("resize", redraw);
    filter();
  }
  function sortBy(key) {
    sortDesc = key === sortKey ? !sortDesc : key !== "id" && key !== "label";
    sortKey = key;
    var i = C[key], sign = sortDesc ? -1 : 1;
    order = rows.slice().sort(function (a, b) {
      var x = a[i], y = b[i];
      if (key === "label") { x = x || "\uffff"; y = y || "\uffff"; }
      var c = x < y ? -1 : x > y ? 1 : 0;
      return c ? c * sign : a[C.id] - b[C.id];  // ties: lowest id first, either direction
    });
    document.querySelectorAll("#latent-table thead th").forEach(function (th) {
      var arrow = th.querySelector(".arrow");
      arrow.textContent = th.getAttribute("data-key") === key ? (sortDesc ? "\u25bc" : "\u25b2") : "";
    });
    filter();
  }
  function filter() {
    var q = document.getElementById("search").value.trim().toLowerCase();
    view = q ? order.filter(function (r) { return haystack[r[C.id]].indexOf(q) >= 0; }) : order;
    document.getElementById("count").textContent = view.length + " of " + rows.length + " latents";
    wrap.scrollTop = 0;
    drawRows();
  }

  /* ---------- latent view ---------- */
  var tip;
  function tokenStrip(ex, vmax) {
    var div = el("div", { cls: "toks" });
    ex.t.forEach(function (s, j) {
      var a = ex.a[j], span = el("span", { cls: "tok" + (j === ex.i ? " max" : ""), text: show(s) });
      if (a > 0) span.style.background = "rgba(var(--hot)," + Math.min(1, 0.12 + 0.88 * a / vmax).toFixed(3) + ")";
      span.setAttribute("data-act", String(a));
      span.addEventListener("mouseenter", function (ev) {
        tip.textContent = JSON.stringify(s) + "  activation " + fmt(a, 4);
        tip.style.display = "block"; moveTip(ev);
      });
      span.addEventListener("mousemove", moveTip);
      span.addEventListener("mouseleave", function () { tip.style.display = "none"; });
      div.appendChild(span);
    });
    return div;
  }
  function moveTip(ev) { tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 14) + "px"; }
  function exampleList(list, vmax) {
    var box = el("div", { cls: "examples" });
    if (!list.length) box.appendChild(el("div", { cls: "ex muted", text: "no examples" }));
    list.forEach(function (ex) {
      box.appendChild(el("div", { cls: "ex" }, el("span", { cls: "val", text: fmt(ex.v, 4) }), tokenStrip(ex, vmax)));
    });
    return box;
  }
  function logitTable(title, list, cls) {
    var tb = el("tbody");
    list.forEach(function (p) {
      tb.appendChild(el("tr", null, el("td", null, el("span", { cls: "chip", text: show(p[0]) })),
                        el("td", { cls: "num " + cls, text: (p[1] > 0 ? "+" : "") + fmt(p[1]) })));
    });
    return el("table", { cls: "small" }, el("thead", null, el("tr", null, el("th", { text: title }),
              el("th", { cls: "num", text: "logit" }))), tb);
  }
  function latentLink(id) {
    var a = el("a", { cls: "lat", text: "#" + id, href: "#latent-" + id });
    return a;
  }
  function neighbourTable(list) {
    var tb = el("tbody");
    list.forEach(function (p) {
      var r = byId[p[0]];
      tb.appendChild(el("tr", null, el("td", null, r ? latentLink(p[0]) : el("span", { text: "#" + p[0] })),
        el("td", { cls: "num", text: p[1].toFixed(3) }),
        el("td", null, r ? chips(r[C.top_tokens].slice(0, 2)) : el("span", { cls: "muted", text: "not analysed" }))));
    });
    return el("table", { cls: "small" }, el("thead", null, el("tr", null, el("th", { text: "latent" }),
              el("th", { cls: "num", text: "cosine" }), el("th", { text: "top tokens" }))), tb);
  }
  function drawHistogram(div, h) {
    var x = h.edges.slice(0, -1), y = h.counts.slice();
    x.push(h.edges[h.edges.length - 1]); y.push(0);
    Plotly.newPlot(div, [{ type: "scatter", mode: "lines", x: x, y: y, line: { shape: "hv", color: "rgb(255,122,26)", width: 1.5 },
      fill: "tozeroy", fillcolor: "rgba(255,122,26,0.25)", hovertemplate: "from %{x:.3g}: %{y} tokens<extra></extra>" }],
      { margin: { l: 50, r: 10, t: 6, b: 40 }, xaxis: { type: "log", title: { text: "activation" } },
        yaxis: { title: { text: "tokens" }, rangemode: "tozero" }, height: 240 },
      Object.assign({}, plotConfig, { displayModeBar: false }));
  }
  function card(k, v) { return el("div", { cls: "card" }, el("div", { cls: "k", text: k }), el("div", { cls: "v", text: v })); }

  function render(d) {
    var view = document.getElementById("latent-view");
    view.textContent = "";
    var back = el("a", { cls: "back", href: "#", text: "\u2190 All latents" });
    var r = byId[d.id], label = r ? r[C.label] : "";
    view.appendChild(back);
    view.appendChild(el("div", { cls: "title-row" }, el("h2", { text: "Latent " + d.id }),
      label ? el("div", { cls: "label", text: label }) : null));
    view.lastChild.style.marginBottom = "10px";
    view.appendChild(el("div", { cls: "cards" }, card("density", pct(d.freq)), card("fired on", d.count + " tokens"),
      card("mean act.", fmt(d.mean)), card("max act.", fmt(d.max))));
    var hist = el("div", { cls: "plot", style: "height:240px" });
    view.appendChild(el("div", { cls: "grid3" },
      el("div", { cls: "panel" }, el("h3", { text: "Activation histogram (firing tokens)" }), hist),
      el("div", { cls: "panel" }, el("h3", { text: "Logit effects (decoder \u2192 unembedding)" }),
        el("div", { style: "display:flex;gap:10px" }, logitTable("promoted", d.pos, "pos"), logitTable("suppressed", d.neg, "neg"))),
      el("div", { cls: "panel" }, el("h3", { text: "Nearest latents (decoder cosine)" }), neighbourTable(d.nbr))));
    view.appendChild(el("h2", null, "Top activations", el("span", { cls: "sub", text: "one context per block, highest maximum first" })));
    view.appendChild(exampleList(d.top, d.max || 1));
    view.appendChild(el("h2", null, "Quantile samples", el("span", { cls: "sub",
      text: "a uniform sample of firing tokens cut into equal-count activation intervals, highest first" })));
    d.quant.forEach(function (g, k) {
      var det = el("details", { cls: "q" }, el("summary", null, "Interval " + g.q + " of " + meta.n_quantiles,
        el("span", { cls: "muted", text: fmt(g.lo, 3) + " \u2013 " + fmt(g.hi, 3) + " \u00b7 " + g.ex.length + " examples" })),
        exampleList(g.ex, d.max || 1));
      if (k < 3) det.open = true;
      view.appendChild(det);
    });
    if (d.hist.counts.length) drawHistogram(hist, d.hist);
    else hist.appendChild(el("div", { cls: "muted", text: "never fired" }));
  }

  /* ---------- routing and lazy loading ---------- */
  function open(id) { location.hash = "#latent-" + id; }
  function route() {
    var m = /^#latent-(\d+)$/.exec(location.hash);
    var overview = document.getElementById("overview"), view = document.getElementById("latent-view");
    if (!m) {
      current = null; view.hidden = true; overview.hidden = false;
      window.dispatchEvent(new Event("resize"));
      return;
    }
    var id = +m[1];
    current = id; overview.hidden = true; view.hidden = false;
    window.scrollTo(0, 0);
    if (cache[id]) { render(cache[id]); return; }
    if (!byId[id]) { view.textContent = ""; view.appendChild(el("p", { text: "Latent " + id + " was not analysed." })); return; }
    view.textContent = "";
    view.appendChild(el("p", { cls: "muted", text: "Loading latent " + id + "\u2026" }));
    var s = document.createElement("script");
    s.src = "latents/" + id + ".js";
    s.onerror = function () {
      if (current === id) { view.textContent = ""; view.appendChild(el("p", { text: "Could not load latents/" + id + ".js." })); }
    };
    document.body.appendChild(s);
  }
  window.SAEDash = {
    register: function (d) {
      cache[d.id] = d;
      if (d.id === current) render(d);
    }
  };

  document.addEventListener("DOMContentLoaded", function () {
    tip = el("div", { id: "tip" });
    document.body.appendChild(tip);
    buildTable();
    drawScatter();
    window.addEventListener("hashchange", route);
    route();
  });
})();
