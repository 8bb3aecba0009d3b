// A layered graph drawing in SVG: each node goes one layer right of its deepest predecessor,
// nodes in a layer are ordered by the mean position of their predecessors (one sweep), and edges
// are cubic curves. Enough for pipeline DAGs and lineage graphs of a few hundred nodes.
const NS = "http://www.w3.org/2000/svg";
const W = 170, H = 34, GX = 60, GY = 16;

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

export function layout(nodes, edges) {
  const ids = new Set(nodes.map((n) => n.id));
  const preds = new Map(nodes.map((n) => [n.id, []]));
  for (const e of edges) if (ids.has(e.from) && ids.has(e.to) && e.from !== e.to) preds.get(e.to).push(e.from);
  const layer = new Map();
  const visiting = new Set();
  const depth = (id) => {
    if (layer.has(id)) return layer.get(id);
    if (visiting.has(id)) return 0; // a cycle (never in a DAG): cut it
    visiting.add(id);
    const d = Math.max(-1, ...preds.get(id).map(depth)) + 1;
    visiting.delete(id);
    layer.set(id, d);
    return d;
  };
  nodes.forEach((n) => depth(n.id));
  const layers = [];
  nodes.forEach((n) => (layers[layer.get(n.id)] ||= []).push(n.id));
  const row = new Map();
  layers.forEach((ids) => {
    const key = (id) => { const p = preds.get(id).filter((x) => row.has(x)); return p.length ? p.reduce((a, x) => a + row.get(x), 0) / p.length : 0; };
    ids.sort((a, b) => key(a) - key(b));
    ids.forEach((id, i) => row.set(id, i));
  });
  const tallest = Math.max(1, ...layers.map((l) => l.length));
  const pos = new Map();
  layers.forEach((ids, x) => {
    const offset = ((tallest - ids.length) * (H + GY)) / 2;
    ids.forEach((id, i) => pos.set(id, { x: 10 + x * (W + GX), y: 10 + offset + i * (H + GY) }));
  });
  return { pos, width: 20 + layers.length * (W + GX) - GX, height: 20 + tallest * (H + GY) - GY };
}

/** Draws `nodes` ({id, label, status}) and `edges` ({from, to}) into `svg`. */
export function drawDag(svg, nodes, edges, { selected, onSelect } = {}) {
  const { pos, width, height } = layout(nodes, edges);
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${Math.max(width, 300)} ${Math.max(height, 60)}`);
  svg.style.height = `${Math.min(Math.max(height, 60), 640)}px`;
  const defs = el("defs", {}, svg);
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, defs);
  el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#9aa3ad" }, marker);
  for (const e of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
    el("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }, svg);
  }
  for (const n of nodes) {
    const p = pos.get(n.id);
    const g = el("g", { class: `node ${n.status}${n.id === selected ? " selected" : ""}`, transform: `translate(${p.x},${p.y})`, tabindex: "0", role: "button", "data-id": n.id, "data-status": n.status, "aria-label": `${n.label}: ${n.status}` }, svg);
    el("title", {}, g).textContent = `${n.label} (${n.status})`;
    el("rect", { width: W, height: H, rx: 6 }, g);
    const t = el("text", { x: 10, y: H / 2 + 4 }, g);
    t.textContent = n.label.length > 24 ? `${n.label.slice(0, 23)}…` : n.label;
    if (onSelect) {
      g.addEventListener("click", () => onSelect(n.id));
      g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onSelect(n.id); } });
    }
  }
  if (selected) svg.querySelector(`g.node[data-id="${CSS.escape(selected)}"]`)?.focus({ preventScroll: true });
}
