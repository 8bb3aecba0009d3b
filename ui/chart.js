// Line charts on canvas: several series overlaid, hover for the nearest values, drag to zoom on x
// (with `refetch`, the server sends the points of the zoomed range), double-click to reset.
const COLORS = ["#2563eb", "#d64545", "#1f9d55", "#c98a1b", "#7c5cc4", "#0e9aa7", "#e0679b", "#5b6470"];

function fmt(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(2) : Number(v.toPrecision(4)).toString();
}

export function lineChart(container, title, initial, { xlabel = "step", time = false, refetch = null } = {}) {
  container.innerHTML = "";
  const head = document.createElement("div");
  head.className = "toolbar";
  head.innerHTML = `<b></b><span class="legend"></span>`;
  head.querySelector("b").textContent = title;
  const legend = head.querySelector(".legend");
  const canvas = document.createElement("canvas");
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `chart of ${title}`);
  const tip = document.createElement("div");
  tip.className = "tip";
  container.append(head, canvas, tip);
  let series = initial;
  let view = null; // [x0, x1] when zoomed
  let drag = null;
  let hover = null;
  const P = { l: 56, r: 12, t: 8, b: 26 };

  initial.forEach((s, i) => {
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${COLORS[i % COLORS.length]}"></i>`;
    item.append(s.name);
    legend.appendChild(item);
  });

  const bounds = () => {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const s of series) for (const [x, y] of s.points) {
      if (view && (x < view[0] || x > view[1])) continue;
      if (x < x0) x0 = x; if (x > x1) x1 = x;
      if (Number.isFinite(y)) { if (y < y0) y0 = y; if (y > y1) y1 = y; }
    }
    if (view) [x0, x1] = view;
    if (!Number.isFinite(x0)) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const pad = (y1 - y0) * 0.05;
    return { x0, x1, y0: y0 - pad, y1: y1 + pad };
  };

  const draw = () => {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, hgt = canvas.clientHeight;
    canvas.width = w * dpr; canvas.height = hgt * dpr;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    const b = bounds();
    const sx = (x) => P.l + ((x - b.x0) / (b.x1 - b.x0)) * (w - P.l - P.r);
    const sy = (y) => P.t + (1 - (y - b.y0) / (b.y1 - b.y0)) * (hgt - P.t - P.b);
    ctx.font = "11px sans-serif"; ctx.fillStyle = "#6a7380"; ctx.strokeStyle = "#eceff3"; ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = b.y0 + ((b.y1 - b.y0) * i) / 4, py = sy(y);
      ctx.beginPath(); ctx.moveTo(P.l, py); ctx.lineTo(w - P.r, py); ctx.stroke();
      ctx.fillText(fmt(y), 4, py + 4);
      const x = b.x0 + ((b.x1 - b.x0) * i) / 4;
      const label = time ? new Date(x).toLocaleTimeString() : fmt(x);
      ctx.fillText(label, Math.min(sx(x) - 10, w - 60), hgt - 8);
    }
    ctx.fillText(xlabel, w - P.r - 30, hgt - 18);
    ctx.save();
    ctx.beginPath(); ctx.rect(P.l, P.t, w - P.l - P.r, hgt - P.t - P.b); ctx.clip();
    series.forEach((s, i) => {
      ctx.strokeStyle = COLORS[i % COLORS.length]; ctx.lineWidth = 1.5; ctx.beginPath();
      let started = false;
      for (const [x, y] of s.points) {
        if (!Number.isFinite(y)) continue;
        const px = sx(x), py = sy(y);
        if (started) ctx.lineTo(px, py); else { ctx.moveTo(px, py); started = true; }
      }
      ctx.stroke();
    });
    if (drag && drag.x1 != null) {
      ctx.fillStyle = "rgba(37,99,235,.12)";
      ctx.fillRect(Math.min(drag.x0, drag.x1), P.t, Math.abs(drag.x1 - drag.x0), hgt - P.t - P.b);
    }
    if (hover != null) {
      ctx.strokeStyle = "#888"; ctx.beginPath(); ctx.moveTo(hover, P.t); ctx.lineTo(hover, hgt - P.b); ctx.stroke();
    }
    ctx.restore();
    return { b, sx, sy, w };
  };
  let geom = draw();
  new ResizeObserver(() => { geom = draw(); }).observe(canvas);

  const toX = (px) => geom.b.x0 + ((px - P.l) / (geom.w - P.l - P.r)) * (geom.b.x1 - geom.b.x0);
  canvas.addEventListener("mousedown", (e) => { drag = { x0: e.offsetX, x1: null }; });
  canvas.addEventListener("mousemove", (e) => {
    if (drag) { drag.x1 = e.offsetX; geom = draw(); return; }
    hover = e.offsetX; geom = draw();
    const x = toX(e.offsetX);
    const rows = series.map((s, i) => {
      let best = null;
      let lo = 0, hi = s.points.length - 1;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (s.points[mid][0] < x) lo = mid + 1; else hi = mid; }
      for (const j of [lo - 1, lo]) if (s.points[j] && (!best || Math.abs(s.points[j][0] - x) < Math.abs(best[0] - x))) best = s.points[j];
      return best ? `<span style="color:${COLORS[i % COLORS.length]}">■</span> ${s.name}: ${fmt(best[1])} @ ${time ? new Date(best[0]).toLocaleTimeString() : best[0]}` : "";
    }).filter(Boolean);
    tip.innerHTML = rows.join("<br>");
    tip.style.display = rows.length ? "block" : "none";
    tip.style.left = `${Math.min(e.offsetX + 14, geom.w - 220)}px`;
    tip.style.top = `${e.offsetY + 10}px`;
  });
  canvas.addEventListener("mouseleave", () => { hover = null; tip.style.display = "none"; geom = draw(); });
  window.addEventListener("mouseup", async () => {
    if (!drag) return;
    const d = drag; drag = null;
    if (d.x1 == null || Math.abs(d.x1 - d.x0) < 5) { geom = draw(); return; }
    view = [toX(Math.min(d.x0, d.x1)), toX(Math.max(d.x0, d.x1))];
    if (refetch) series = await refetch(view);
    geom = draw();
    shown();
  });
  canvas.addEventListener("dblclick", () => { view = null; series = initial; geom = draw(); shown(); });
  // What is on screen, for tests and scripts: the points drawn and the zoomed x range.
  const shown = () => {
    container.dataset.points = String(series.reduce((n, s) => n + s.points.length, 0));
    if (view) container.dataset.view = view.map((x) => Math.round(x)).join(","); else delete container.dataset.view;
  };
  shown();
  return { redraw: () => (geom = draw()) };
}
