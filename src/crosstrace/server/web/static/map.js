// The service map: dagre lays the graph out, this draws it as SVG. Nodes link to
// the service's failing requests of the same window.
import dagre from "./vendor/dagre.esm.js";

const SVG = "http://www.w3.org/2000/svg";
const svg = document.getElementById("map");
const graph = JSON.parse(document.getElementById("map-data").textContent);

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function level(rate) {
  if (rate <= 0) return "ok";
  return rate < 0.05 ? "warn" : "bad";
}

const pct = (errors, calls) => (calls ? ((100 * errors) / calls).toFixed(1) : "0.0");

function draw() {
  if (!graph.nodes.length) {
    svg.setAttribute("viewBox", "0 0 400 40");
    el("text", { x: 10, y: 24, class: "map-empty" }, svg).textContent = "No services in this window.";
    return;
  }
  const g = new dagre.graphlib.Graph({ multigraph: false });
  g.setGraph({ rankdir: "LR", nodesep: 36, ranksep: 120, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const node of graph.nodes) {
    const width = Math.max(120, 9 * node.id.length + 24);
    g.setNode(node.id, { width, height: 48, data: node });
  }
  for (const edge of graph.edges) {
    const label = `${edge.calls} calls, ${pct(edge.errors, edge.calls)}% err`;
    g.setEdge(edge.caller, edge.callee, { width: 7 * label.length + 8, height: 18, labelpos: "c", label, data: edge });
  }
  dagre.layout(g);
  const { width, height } = g.graph();
  svg.setAttribute("viewBox", `0 0 ${Math.ceil(width)} ${Math.ceil(height)}`);
  svg.setAttribute("width", String(Math.ceil(width)));
  const defs = el("defs", {}, svg);
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
  el("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }, marker);
  for (const e of g.edges()) {
    const edge = g.edge(e);
    const d = edge.points.map((p, i) => `${i ? "L" : "M"} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(" ");
    const group = el("g", { class: `edge ${level(edge.data.calls ? edge.data.errors / edge.data.calls : 0)}` }, svg);
    el("path", { d, "marker-end": "url(#arrow)" }, group);
    el("rect", { x: edge.x - edge.width / 2, y: edge.y - edge.height / 2, width: edge.width, height: edge.height, rx: 3, class: "edge-label" }, group);
    const label = el("text", { x: edge.x, y: edge.y + 4, "text-anchor": "middle" }, group);
    label.textContent = edge.label;
    el("title", {}, group).textContent =
      `${edge.data.caller} → ${edge.data.callee}: ${edge.data.calls} calls, ${edge.data.errors} errors`;
  }
  for (const id of g.nodes()) {
    const node = g.node(id);
    const data = node.data;
    const link = el("a", {
      href: `/traces?service=${encodeURIComponent(id)}&status=error&start=${encodeURIComponent(graph.window)}`,
      class: `node ${level(data.rate)}`,
    }, svg);
    el("title", {}, link).textContent = `${id}: open its failing requests`;
    el("rect", { x: node.x - node.width / 2, y: node.y - node.height / 2, width: node.width, height: node.height, rx: 8 }, link);
    el("text", { x: node.x, y: node.y - 4, "text-anchor": "middle", class: "node-name" }, link).textContent = id;
    el("text", { x: node.x, y: node.y + 14, "text-anchor": "middle", class: "node-fig" }, link).textContent =
      `${data.calls} calls · ${pct(data.errors, data.calls)}% err`;
  }
  svg.dataset.ready = "1";
}

draw();
