// DiffuGAN emphasis editor: click and brush where detail matters, on the importance preview, right inside the
// "DiffuGAN Merge Emphasis" node. What you add is stored in that node's `points` input (JSON, image pixels), so the
// workflow saves, reloads and queues it like any other input.
//
//   click            add a point (weight 1); drag before releasing to set its radius
//   Shift + click    the same with half the weight (a lighter emphasis)
//   Ctrl + drag      magnify brush: a stroke of points (radius = the brush size) along the path
//   Undo / Clear     the buttons under the picture
//
// The picture is the last output of the DiffuGAN Importance Preview fed (directly or through other nodes) by this
// Merge node, so after a run you see the merged heatmap the refiner works from, and your new points over it.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const MERGE = "DiffuGANImportanceMerge";
const PREVIEW = "DiffuGANImportancePreview";
const BRUSH_RADIUS_SHARE = 0.06; // brush radius as a share of the picture's width
const MIN_RADIUS = 4;

// The points in the node's input; null when the typed text is not a JSON list of points (then the editor leaves it
// alone rather than overwrite what the user typed; the node's own error says what is wrong when it runs).
function readPoints(node) {
  const w = node.widgets?.find((w) => w.name === "points");
  if (!w || !w.value || !String(w.value).trim()) return [];
  try {
    const raw = JSON.parse(w.value);
    const list = Array.isArray(raw) ? raw : [raw];
    return list.every((p) => p && Number.isFinite(p.x) && Number.isFinite(p.y)) ? list : null;
  } catch {
    return null;
  }
}

function pointsText(node) {
  return node.widgets?.find((w) => w.name === "points")?.value ?? "";
}

function setPointsText(node, text) {
  const w = node.widgets?.find((w) => w.name === "points");
  if (!w) return;
  w.value = text;
  w.callback?.(text);
  node.graph?.setDirtyCanvas(true, true);
}

function pointsToText(points) {
  const round = (v) => Math.round(v * 10) / 10;
  return points.length
    ? JSON.stringify(points.map((p) => ({ x: round(p.x), y: round(p.y), radius: round(p.radius ?? 32),
                                          weight: p.weight ?? 1, ...(p.stroke ? { stroke: true } : {}) })))
    : "";
}

// The Merge nodes whose output reaches `node` (walking its inputs upstream).
function upstreamMerges(node, seen = new Set()) {
  if (!node || seen.has(node.id)) return [];
  seen.add(node.id);
  if (node.type === MERGE) return [node];
  const found = [];
  for (const input of node.inputs ?? []) {
    if (input.link == null) continue;
    const link = node.graph.links[input.link] ?? node.graph.links.get?.(input.link);
    if (link) found.push(...upstreamMerges(node.graph.getNodeById(link.origin_id), seen));
  }
  return found;
}

function createEditor(node) {
  const root = document.createElement("div");
  root.className = "diffugan-emphasis";
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;";
  const canvas = document.createElement("canvas");
  canvas.className = "diffugan-emphasis-canvas";
  canvas.style.cssText = "flex:1;min-height:0;width:100%;background:#222;cursor:crosshair;touch-action:none;";
  const bar = document.createElement("div");
  bar.style.cssText = "display:flex;gap:4px;font-size:11px;color:#bbb;align-items:center;";
  const hint = document.createElement("span");
  hint.textContent = "run once to see the preview; click, Shift+click, Ctrl+drag";
  hint.style.flex = "1";
  const undo = Object.assign(document.createElement("button"), { textContent: "Undo" });
  const clear = Object.assign(document.createElement("button"), { textContent: "Clear" });
  bar.append(hint, undo, clear);
  root.append(canvas, bar);

  const state = { image: null, drag: null, maskSize: null, undo: [] };
  // Points are stored in the pixels of the importance mask the node merges into (its size comes with each run);
  // the picture may be of another size.
  const scale = () => {
    const img = state.image, m = state.maskSize;
    return img && m ? { x: m[1] / img.naturalWidth, y: m[0] / img.naturalHeight } : { x: 1, y: 1 };
  };
  const toView = (p) => { const k = scale(); return { ...p, x: p.x / k.x, y: p.y / k.y, radius: (p.radius ?? 32) / k.x }; };
  const toStored = (p) => { const k = scale(); return { ...p, x: p.x * k.x, y: p.y * k.y, radius: p.radius * k.x }; };
  node.diffuganEmphasis = state;

  // picture rectangle inside the canvas (contain) and the conversions to image pixels
  const layout = () => {
    const cw = canvas.clientWidth, ch = canvas.clientHeight;
    if (canvas.width !== cw || canvas.height !== ch) Object.assign(canvas, { width: cw, height: ch });
    const img = state.image;
    if (!img) return null;
    const s = Math.min(cw / img.naturalWidth, ch / img.naturalHeight);
    const w = img.naturalWidth * s, h = img.naturalHeight * s;
    return { s, x: (cw - w) / 2, y: (ch - h) / 2, w, h };
  };
  const toImage = (e) => {
    const r = layout();
    if (!r) return null;
    const b = canvas.getBoundingClientRect();
    const cx = ((e.clientX - b.left) * canvas.width) / b.width, cy = ((e.clientY - b.top) * canvas.height) / b.height;
    const x = (cx - r.x) / r.s, y = (cy - r.y) / r.s;
    if (x < 0 || y < 0 || x > state.image.naturalWidth || y > state.image.naturalHeight) return null;
    return { x, y };
  };

  const draw = () => {
    const ctx = canvas.getContext("2d");
    const r = layout();
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!r) return;
    ctx.drawImage(state.image, r.x, r.y, r.w, r.h);
    const pending = state.drag ? state.drag.points : [];
    for (const p of [...(readPoints(node) ?? []).map(toView), ...pending]) {
      // what the Merge node adds there: a Gaussian blob (sigma = radius / 2), drawn in the preview's heat colours
      const radius = Math.max(1, p.radius * r.s);
      const weight = Math.max(0, Math.min(1, p.weight ?? 1));
      const cx = r.x + p.x * r.s, cy = r.y + p.y * r.s;
      const blob = ctx.createRadialGradient(cx, cy, 0, cx, cy, radius * 1.5);
      blob.addColorStop(0, `rgba(230, 26, 13, ${0.75 * weight})`);
      blob.addColorStop(0.45, `rgba(255, 217, 26, ${0.45 * weight})`);
      blob.addColorStop(1, "rgba(26, 204, 153, 0)");
      ctx.fillStyle = blob;
      ctx.beginPath();
      ctx.arc(cx, cy, radius * 1.5, 0, 2 * Math.PI);
      ctx.fill();
      if (!p.stroke) {  // a clicked point's radius, outlined
        ctx.beginPath();
        ctx.arc(cx, cy, radius, 0, 2 * Math.PI);
        ctx.strokeStyle = "rgba(255, 255, 255, 0.7)";
        ctx.lineWidth = 1;
        ctx.stroke();
      }
    }
  };
  state.draw = draw;

  canvas.addEventListener("pointerdown", (e) => {
    const at = toImage(e);
    if (!at || e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    if (readPoints(node) === null) {
      hint.textContent = "points is not a JSON list of {x, y, radius, weight}: fix or clear it first";
      return;
    }
    canvas.setPointerCapture(e.pointerId);
    const weight = e.shiftKey ? 0.5 : 1;
    if (e.ctrlKey || e.metaKey) {
      const radius = Math.max(MIN_RADIUS, state.image.naturalWidth * BRUSH_RADIUS_SHARE);
      state.drag = { brush: true, radius, weight, last: at, points: [{ ...at, radius, weight }] };
    } else {
      state.drag = { brush: false, start: at, startClient: [e.clientX, e.clientY], weight,
                     points: [{ ...at, radius: 16, weight }] };
    }
    draw();
  });
  canvas.addEventListener("pointermove", (e) => {
    const d = state.drag;
    if (!d) return;
    e.stopPropagation();
    const at = toImage(e);
    if (!at) return;
    if (d.brush) {  // a point every half radius along the path
      const dist = Math.hypot(at.x - d.last.x, at.y - d.last.y);
      const n = Math.floor(dist / (d.radius / 2));
      for (let i = 1; i <= n; i++) {
        const t = (i * d.radius) / 2 / dist;
        d.points.push({ x: d.last.x + (at.x - d.last.x) * t, y: d.last.y + (at.y - d.last.y) * t,
                        radius: d.radius, weight: d.weight });
      }
      if (n) d.last = d.points[d.points.length - 1];
    } else if (d.dragging || Math.hypot(e.clientX - d.startClient[0], e.clientY - d.startClient[1]) > 4) {
      d.dragging = true;  // a shaky click stays a click; past 4 screen pixels it sets the radius
      d.points[0].radius = Math.max(MIN_RADIUS, Math.hypot(at.x - d.start.x, at.y - d.start.y));
    }
    draw();
  });
  const finish = (e) => {
    const d = state.drag;
    if (!d) return;
    e.stopPropagation();
    state.drag = null;
    const points = readPoints(node);
    if (points === null) return;
    state.undo.push(pointsText(node));
    points.push(...d.points.map((p) => toStored(d.brush ? { ...p, stroke: true } : p)));
    setText(pointsToText(points));
    draw();
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  const setText = (text) => {  // every edit of ours goes through here, so Undo knows what it wrote
    setPointsText(node, text);
    state.written = text;
  };
  undo.addEventListener("click", (e) => {
    e.stopPropagation();
    if (state.written !== pointsText(node)) state.undo = [];  // edited by hand since: nothing of ours to undo
    if (state.undo.length) setText(state.undo.pop());
    draw();
  });
  clear.addEventListener("click", (e) => {
    e.stopPropagation();
    state.undo.push(pointsText(node));
    setText("");
    draw();
  });
  new ResizeObserver(draw).observe(canvas);

  state.setImage = (url) => {
    const img = new Image();
    img.onload = () => {
      state.image = img;
      hint.textContent = `${img.naturalWidth}×${img.naturalHeight} · click, Shift+click, Ctrl+drag`;
      canvas.dataset.loaded = img.src;
      draw();
    };
    img.src = url;
  };
  return root;
}

app.registerExtension({
  name: "DiffuGAN.EmphasisEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== MERGE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.addDOMWidget("emphasis_editor", "diffugan_emphasis", createEditor(this), {
        serialize: false,
        getMinHeight: () => 220,
      });
      const points = this.widgets.find((w) => w.name === "points");
      const cb = points?.callback;
      if (points) points.callback = (v) => { cb?.call(points, v); this.diffuganEmphasis?.draw?.(); };
      this.setSize([Math.max(this.size[0], 300), Math.max(this.size[1], 420)]);
      return r;
    };
  },
  async setup() {
    // After a preview runs, show its picture in the Merge node(s) upstream of it.
    api.addEventListener("executed", ({ detail }) => {
      const id = detail?.display_node ?? detail?.node;
      const node = app.graph?.getNodeById(Number(id) || id);
      if (node?.type === MERGE && detail.output?.mask_size) {
        node.diffuganEmphasis && (node.diffuganEmphasis.maskSize = detail.output.mask_size[0]);
        node.diffuganEmphasis?.draw();
        return;
      }
      const preview = node;
      const image = detail?.output?.images?.[0];
      if (!preview || preview.type !== PREVIEW || !image) return;
      const params = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder ?? "",
                                           type: image.type ?? "temp" });
      for (const merge of upstreamMerges(preview)) {
        merge.diffuganEmphasis?.setImage(api.apiURL(`/view?${params}`));
      }
    });
  },
});
