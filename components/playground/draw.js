/* Drawing by hand on canvases: heatmaps of the plane, the network coloured by LCA, the loss
 * curve and the per-layer bars. Pure functions of what they are given (no session, no DOM
 * lookups), so app.js can draw every panel from one state in one animation frame. */
(function (root) {
  "use strict";

  const HELPED = "#1a9850";
  const HURT = "#d73027";
  const STILL = "#b9bbc0";
  const BLUE = [8, 119, 189];
  const ORANGE = [245, 147, 34];
  const WHITE = [255, 255, 255];
  const TRAIN_LINE = "#262730";
  const TEST_LINE = "#7b3294";

  /** Size a canvas's backing store to its CSS box × devicePixelRatio; returns its context. */
  let layoutEpoch = 0;
  /** Canvas sizes are read from the layout once per epoch (bumped on resize or a new layout),
   *  so drawing a frame never forces the browser to lay the page out in the middle. */
  function relayout() {
    layoutEpoch++;
  }
  function fit(canvas) {
    const dpr = window.devicePixelRatio || 1;
    if (canvas.sizeEpoch !== layoutEpoch) {
      canvas.sizeEpoch = layoutEpoch;
      canvas.cssW = Math.max(1, Math.round(canvas.clientWidth));
      canvas.cssH = Math.max(1, Math.round(canvas.clientHeight));
    }
    const w = canvas.cssW;
    const h = canvas.cssH;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }

  /** v in [-1, 1] -> blue … white … orange (TensorFlow Playground's plane colours), pale. */
  function diverging(v, out, k, pale) {
    if (!(v === v)) { // NaN: a diverged network predicts nothing; grey
      out[k] = out[k + 1] = out[k + 2] = 200;
      out[k + 3] = 255;
      return;
    }
    const t = v < -1 ? -1 : v > 1 ? 1 : v;
    const c = t < 0 ? BLUE : ORANGE;
    const a = Math.abs(t) * pale;
    out[k] = WHITE[0] + (c[0] - WHITE[0]) * a;
    out[k + 1] = WHITE[1] + (c[1] - WHITE[1]) * a;
    out[k + 2] = WHITE[2] + (c[2] - WHITE[2]) * a;
    out[k + 3] = 255;
  }

  const scratchCanvas = {};
  /** Paint `values[offset … offset + size²)` (row 0 = top) into a size×size canvas: `target`
   *  when given (it is sized and keeps its pixels), else one reusable scratch canvas. */
  function heatImage(values, offset, size, map, pale = 0.85, target = null) {
    let c = target || scratchCanvas[size];
    if (!c) c = scratchCanvas[size] = document.createElement("canvas");
    if (c.width !== size || c.height !== size || !c.img) {
      c.width = c.height = size;
      c.img = c.getContext("2d").createImageData(size, size);
    }
    const data = c.img.data;
    for (let i = 0; i < size * size; i++) diverging(map(values[offset + i]), data, 4 * i, pale);
    c.getContext("2d").putImageData(c.img, 0, 0);
    return c;
  }

  function lcaColor(v) {
    return v < 0 ? HELPED : v > 0 ? HURT : STILL;
  }

  /**
   * The network: columns of nodes (inputs, hidden layers, outputs) joined by one line per
   * weight. `g` = {columns: [{nodes: [{label, image?, lca?, active}]}], edges: [{from:[c,i],
   * to:[c,j], lca}]}; returns the geometry (node boxes and edge segments) for hit-testing.
   */
  function network(canvas, g, top) {
    const { ctx, w, h } = fit(canvas);
    const cols = g.columns.length;
    ctx.font = "12px system-ui, sans-serif";
    const labelW = (c) => Math.max(0, ...c.nodes.map((n) => (n.label ? ctx.measureText(n.label).width : 0)));
    const maxRows = Math.max(...g.columns.map((c) => c.nodes.length), 1);
    const avail = h - top - 8;
    // Node size: as big as the height and the column spacing allow (bigger on a big screen);
    // the side margins hold the labels next to nodes of that size.
    let ns = 40;
    let padL = 0;
    let padR = 0;
    let colGap = 0;
    for (let pass = 0; pass < 2; pass++) {
      padL = labelW(g.columns[0]) + ns / 2 + 8; // room for the input labels
      padR = labelW(g.columns[cols - 1]) + ns / 2 + 14; // and the output labels
      colGap = (w - padL - padR) / Math.max(cols - 1, 1);
      ns = Math.max(16, Math.min(56, avail / maxRows - 9, colGap * 0.45));
    }
    const gap = Math.min(18, Math.max(5, avail / maxRows - ns));
    const blockH = Math.min(avail, maxRows * (ns + gap)); // columns hang from the top
    const boxes = g.columns.map((c, ci) => {
      const x = padL + ci * colGap;
      const k = c.nodes.length;
      return c.nodes.map((_, i) => {
        const y = top + blockH / 2 + (i - (k - 1) / 2) * (ns + gap);
        return { x: x - ns / 2, y: y - ns / 2, s: ns, cx: x, cy: y };
      });
    });
    let maxEdge = 0;
    for (const e of g.edges) maxEdge = Math.max(maxEdge, Math.abs(e.lca));
    let maxNode = 0;
    for (const c of g.columns) for (const n of c.nodes) {
      if (n.lca !== undefined) maxNode = Math.max(maxNode, Math.abs(n.lca));
    }
    // Edges, thin ones first so the thick (important) ones stay on top.
    const segs = g.edges.map((e) => {
      const a = boxes[e.from[0]][e.from[1]];
      const b = boxes[e.to[0]][e.to[1]];
      const rel = maxEdge > 0 ? Math.sqrt(Math.abs(e.lca) / maxEdge) : 0;
      return { e, x1: a.x + a.s, y1: a.cy, x2: b.x, y2: b.cy, width: 0.6 + 7.4 * rel };
    });
    const order = segs.slice().sort((p, q) => p.width - q.width);
    ctx.lineCap = "round";
    for (const s of order) {
      ctx.strokeStyle = maxEdge > 0 ? lcaColor(s.e.lca) : STILL;
      ctx.globalAlpha = maxEdge > 0 ? 0.35 + 0.6 * Math.min(1, s.width / 8) : 0.8;
      ctx.lineWidth = s.width;
      ctx.beginPath();
      ctx.moveTo(s.x1, s.y1);
      ctx.lineTo(s.x2, s.y2);
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    // Nodes: the unit's output over the plane, framed by its LCA (colour = sign, width = size).
    g.columns.forEach((c, ci) => c.nodes.forEach((n, i) => {
      const b = boxes[ci][i];
      ctx.globalAlpha = n.active === false ? 0.3 : 1;
      if (n.lca !== undefined && maxNode > 0 && n.lca !== 0) {
        const ring = 1.5 + 6.5 * Math.sqrt(Math.abs(n.lca) / maxNode);
        ctx.fillStyle = lcaColor(n.lca);
        ctx.fillRect(b.x - ring, b.y - ring, b.s + 2 * ring, b.s + 2 * ring);
        b.ring = ring;
      }
      if (n.image) {
        ctx.imageSmoothingEnabled = true;
        ctx.drawImage(n.image, b.x, b.y, b.s, b.s);
      } else if (n.fill) {
        ctx.fillStyle = n.fill;
        ctx.fillRect(b.x, b.y, b.s, b.s);
      } else {
        ctx.fillStyle = "#f3f3f5";
        ctx.fillRect(b.x, b.y, b.s, b.s);
      }
      ctx.strokeStyle = "#9a9ca3";
      ctx.lineWidth = 1;
      ctx.strokeRect(b.x + 0.5, b.y + 0.5, b.s - 1, b.s - 1);
      if (n.label) {
        ctx.fillStyle = "#262730";
        ctx.font = "12px system-ui, sans-serif";
        ctx.textBaseline = "middle";
        if (ci === 0) {
          ctx.textAlign = "right";
          ctx.fillText(n.label, b.x - 4, b.cy);
        } else {
          ctx.textAlign = "left";
          ctx.fillText(n.label, b.x + b.s + 3 + (b.ring || 0), b.cy);
        }
      }
      ctx.globalAlpha = 1;
    }));
    return { boxes, segs, colX: boxes.map((c, ci) => padL + ci * colGap), nodeSize: ns };
  }

  /** The output plane: prediction heatmap plus points (train filled, test ringed black). */
  function plane(canvas, p) {
    const { ctx, w, h } = fit(canvas);
    const side = Math.min(w, h);
    ctx.imageSmoothingEnabled = !p.discrete;
    ctx.drawImage(p.image, 0, 0, side, side);
    const e = p.extent;
    const toX = (v) => ((v + e) / (2 * e)) * side;
    const toY = (v) => ((e - v) / (2 * e)) * side;
    const r = side > 200 ? 3.2 : 2.6;
    const colorOf = (y) => {
      if (p.task === "regression") {
        const t = Math.max(-1, Math.min(1, y));
        const c = t < 0 ? BLUE : ORANGE;
        const a = Math.abs(t) * 0.9 + 0.1;
        return `rgb(${255 + (c[0] - 255) * a},${255 + (c[1] - 255) * a},${255 + (c[2] - 255) * a})`;
      }
      return y === 1 ? "rgb(245,147,34)" : "rgb(8,119,189)";
    };
    const sets = [[p.train, "#ffffff", 1]];
    if (p.showTest) sets.push([p.test, "#111111", 1.6]);
    for (const [pts, edge, lw] of sets) {
      ctx.lineWidth = lw;
      ctx.strokeStyle = edge;
      for (const pt of pts) {
        ctx.fillStyle = colorOf(pt[2]);
        ctx.beginPath();
        ctx.arc(toX(pt[0]), toY(pt[1]), r, 0, 2 * Math.PI);
        ctx.fill();
        ctx.stroke();
      }
    }
    // Axes ticks at -1, 0, 1.
    ctx.fillStyle = "rgba(38,39,48,0.65)";
    ctx.font = "10px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    for (const v of [-1, 0, 1]) ctx.fillText(String(v), toX(v), side - 1);
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    for (const v of [-1, 1]) ctx.fillText(String(v), 2, toY(v));
    ctx.strokeStyle = "#c8c9ce";
    ctx.lineWidth = 1;
    ctx.strokeRect(0.5, 0.5, side - 1, side - 1);
  }

  function niceMax(v) {
    if (!(v > 0) || !isFinite(v)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /** Loss curves over steps; `hover` = step index to mark. Returns the x mapping for hover. */
  function lossCurve(canvas, hist, steps, hover) {
    const { ctx, w, h } = fit(canvas);
    const left = 34;
    const right = 6;
    const top = 14;
    const bottom = 14;
    const pw = w - left - right;
    const ph = h - top - bottom;
    let ymax = 0;
    for (const v of hist.trainLoss) if (v > ymax) ymax = v;
    for (const v of hist.testLoss) if (v > ymax) ymax = v;
    ymax = niceMax(ymax);
    const xOf = (i) => left + (steps > 0 ? (i / steps) * pw : 0);
    const yOf = (v) => top + ph - (Math.min(v, ymax) / ymax) * ph;
    ctx.strokeStyle = "#e3e4e8";
    ctx.lineWidth = 1;
    ctx.fillStyle = "#6b6f76";
    ctx.font = "10px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const f of [0, 0.5, 1]) {
      const y = yOf(ymax * f);
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(w - right, y);
      ctx.stroke();
      ctx.fillText(formatNum(ymax * f), left - 3, y);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText("loss", 2, 0);
    ctx.textAlign = "right";
    ctx.textBaseline = "bottom";
    ctx.fillText(`step ${steps}`, w - right, h);
    ctx.textAlign = "left";
    ctx.fillText("0", left, h);
    const series = [[hist.testLoss, TEST_LINE], [hist.trainLoss, TRAIN_LINE]];
    const stride = Math.max(1, Math.floor((steps + 1) / (pw * 2)));
    for (const [ys, color] of series) {
      if (!ys.length || !isFinite(ys[0])) continue;
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.6;
      ctx.beginPath();
      ctx.moveTo(xOf(0), yOf(ys[0]));
      for (let i = stride; i <= steps; i += stride) ctx.lineTo(xOf(i), yOf(ys[i]));
      ctx.lineTo(xOf(steps), yOf(ys[steps]));
      ctx.stroke();
    }
    // Legend.
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "top";
    ctx.textAlign = "right";
    ctx.fillStyle = TRAIN_LINE;
    ctx.fillText("training", w - right - 40, 0);
    ctx.fillStyle = TEST_LINE;
    ctx.fillText("test", w - right, 0);
    if (hover !== null && hover !== undefined && steps > 0) {
      const x = xOf(hover);
      ctx.strokeStyle = "rgba(38,39,48,0.5)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + ph);
      ctx.stroke();
      for (const [ys, color] of series) {
        if (!isFinite(ys[hover])) continue;
        ctx.fillStyle = color;
        ctx.beginPath();
        ctx.arc(x, yOf(ys[hover]), 3, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    return { left, pw, steps };
  }

  /** Each layer's total LCA as a horizontal bar from zero: green left (helped), red right. */
  function layerBars(canvas, names, totals) {
    const { ctx, w, h } = fit(canvas);
    const labelW = 38;
    const valueW = 58;
    const mid = labelW + (w - labelW - valueW) / 2;
    const half = (w - labelW - valueW) / 2 - 2;
    const rowH = Math.min(18, h / Math.max(names.length, 1));
    let m = 0;
    for (const v of totals) m = Math.max(m, Math.abs(v));
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    names.forEach((name, i) => {
      const y = i * rowH + rowH / 2;
      const v = totals[i];
      ctx.fillStyle = "#262730";
      ctx.textAlign = "left";
      ctx.fillText(name, 0, y);
      const len = m > 0 ? (Math.abs(v) / m) * half : 0;
      ctx.fillStyle = lcaColor(v);
      if (v < 0) ctx.fillRect(mid - len, y - rowH * 0.32, len, rowH * 0.64);
      else ctx.fillRect(mid, y - rowH * 0.32, len, rowH * 0.64);
      ctx.fillStyle = "#262730";
      ctx.textAlign = "right";
      ctx.fillText(formatNum(v, true), w, y);
    });
    ctx.strokeStyle = "#9a9ca3";
    ctx.beginPath();
    ctx.moveTo(mid + 0.5, 0);
    ctx.lineTo(mid + 0.5, names.length * rowH);
    ctx.stroke();
  }

  function formatNum(v, signed = false) {
    if (!isFinite(v)) return "–";
    const a = Math.abs(v);
    let s;
    if (a === 0) s = "0";
    else if (a >= 1e4) s = v.toExponential(1);
    else if (a >= 100) s = v.toFixed(0);
    else if (a >= 0.01) s = v.toFixed(3);
    else s = v.toExponential(1);
    s = s.replace("-", "\u2212");
    return signed && v > 0 ? "+" + s : s;
  }

  root.PGDraw = { HELPED, HURT, fit, relayout, heatImage, network, plane, lossCurve, layerBars, formatNum };
})(window);
