/* The Playground's page: controls, the play loop and the Streamlit component protocol.
 *
 * One state object (`state`) holds the settings and the training session; one
 * requestAnimationFrame loop steps the session and then draws every panel from it, so the step
 * number, the network, the plane, the curves and the bars always agree. The server is told only
 * when a setting changes (streamlit:setComponentValue, for the URL), never per step.
 */
(function () {
  "use strict";

  const E = window.PGEngine;
  const D = window.PGDraw;
  const $ = (id) => document.getElementById(id);

  // Fallbacks for opening this page on its own; pages/playground.py sends its lists in `args`.
  let OPTIONS = {
    lr: ["0.0001", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1", "3"],
    rate: ["0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1"],
    speed: ["1", "2", "5", "10", "20", "50", "100", "200", "500", "max"],
    view: ["whole session", "recent steps"],
    reg: ["none", "L1", "L2"],
    activation: E.ACTIVATIONS.slice(),
  };
  let DEFAULTS = {
    dataset: "circles", noise: "0.05", train: "50", hidden: "4,4", activation: "tanh",
    lr: "0.03", batch: "10", seed: "0", speed: "50", view: "whole session",
    features: "x1,x2", reg: "none", rate: "0.01", test: "0", discrete: "0",
  };
  const STRUCTURAL = ["dataset", "noise", "train", "hidden", "activation", "seed", "features"];
  const LIVE = ["lr", "batch", "reg", "rate"];
  const DATA_KEYS = ["dataset", "train", "noise", "batch", "seed"];
  const MAX_LAYERS = 6;
  const MAX_NEURONS = 8;
  const POINTS = 400;
  const GRID = 40; // the plane is computed on GRID×GRID points each frame (smoothed when drawn)
  const LABEL = {
    tanh: "Tanh", relu: "ReLU", sigmoid: "Sigmoid", gelu: "GELU", linear: "Linear",
    none: "None", L1: "L1", L2: "L2", max: "fastest",
    "whole session": "whole session", "recent steps": `last ${E.RECENT_WINDOW} steps`,
  };

  const state = {
    s: Object.assign({}, DEFAULTS),
    hide: new Set(),
    session: null,
    playing: false,
    dirty: true,
    ready: false,
    lastSent: null,
    hoverNet: null, // {x, y} in the network canvas
    hoverLoss: null, // step index
    mouse: { x: 0, y: 0 },
    geometry: null,
    planes: null,
    featureImages: null,
    stats: { frames: 0, drawn: 0, stepsPlayed: 0 },
  };

  // -- settings ---------------------------------------------------------------------------
  const hiddenSizes = () => state.s.hidden.split(",").map((v) => parseInt(v, 10))
    .filter((n) => n >= 1).map((n) => Math.min(n, MAX_NEURONS)).slice(0, MAX_LAYERS);
  const featureList = () => {
    const f = state.s.features.split(",").filter((id) => id in E.FEATURES);
    return f.length ? E.FEATURE_IDS.filter((id) => f.includes(id)) : ["x1", "x2"];
  };
  const task = () => (E.REGRESSION_SETS.includes(state.s.dataset) ? "regression" : "classification");
  const viewName = () => (state.s.view === "recent steps" ? "recent" : "cumulative");

  function sessionConfig() {
    const s = state.s;
    return {
      task: task(), dataset: s.dataset, points: POINTS, noise: +s.noise,
      trainFraction: +s.train / 100, seed: +s.seed, hidden: hiddenSizes(),
      activation: s.activation, features: featureList(), lr: +s.lr, batch: +s.batch,
      reg: s.reg, regRate: +s.rate,
    };
  }

  function adopt(values) {
    for (const k of Object.keys(DEFAULTS)) {
      if (values && values[k] !== undefined && values[k] !== null) state.s[k] = String(values[k]);
    }
  }

  function rebuild() {
    D.relayout(); // the data row and the metrics may change height
    state.session = new E.Session(sessionConfig());
    state.extent = state.session.extent();
    state.featureImages = featureImages(state.extent);
    state.layoutChanged = true;
    state.hoverLoss = null;
    drawThumbnails();
    state.dirty = true;
  }

  /** Change one setting from a control: rebuild, or apply live, then tell the server (later). */
  function set(key, value) {
    const v = String(value);
    if (state.s[key] === v) return;
    state.s[key] = v;
    if (STRUCTURAL.includes(key) || !isFinite(state.session.loss0)) rebuild(); // or diverged
    else if (LIVE.includes(key)) {
      state.session.setLive({ lr: +state.s.lr, batch: +state.s.batch, reg: state.s.reg,
        regRate: +state.s.rate });
    }
    state.dirty = true;
    syncControls();
    scheduleReport();
  }

  // -- the Streamlit component protocol (what streamlit-component-lib would do) ------------
  const embedded = window.parent !== window;
  function post(type, data) {
    if (!embedded) return;
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type }, data || {}), "*");
  }
  let reportTimer = null;
  function scheduleReport() {
    clearTimeout(reportTimer);
    reportTimer = setTimeout(() => {
      const value = Object.assign({}, state.s);
      const text = JSON.stringify(value);
      if (text === state.lastSent) return;
      state.lastSent = text;
      post("streamlit:setComponentValue", { value, dataType: "json" });
    }, 400);
  }
  let lastHeight = 0;
  function reportHeight() {
    const h = Math.ceil(document.getElementById("pg").getBoundingClientRect().height) + 4;
    if (h !== lastHeight) {
      lastHeight = h;
      post("streamlit:setFrameHeight", { height: h });
    }
  }
  window.addEventListener("message", (ev) => {
    const m = ev.data;
    if (!m || m.type !== "streamlit:render") return;
    const args = m.args || {};
    if (args.options) OPTIONS = Object.assign({}, OPTIONS, args.options);
    if (args.defaults) DEFAULTS = Object.assign({}, DEFAULTS, args.defaults);
    state.hide = new Set(args.hide || []);
    if (!state.ready) start(args.settings || {}); // later renders never override the student
    else applyHide();
  });

  function start(settings) {
    state.s = Object.assign({}, DEFAULTS);
    adopt(settings);
    state.lastSent = JSON.stringify(state.s);
    buildControls();
    rebuild();
    applyHide();
    syncControls();
    state.ready = true;
    window.PG.ready = true;
    requestAnimationFrame(reportHeight);
  }

  // -- controls -------------------------------------------------------------------------------
  function fillSelect(id, values, current) {
    const el = $(id);
    el.innerHTML = "";
    for (const v of values) {
      const o = document.createElement("option");
      o.value = v;
      o.textContent = LABEL[v] || v;
      el.appendChild(o);
    }
    el.value = current;
  }

  function buildControls() {
    fillSelect("pg-speed", OPTIONS.speed, state.s.speed);
    $("pg-speed").querySelectorAll("option").forEach((o) => {
      if (o.value !== "max") o.textContent = `${o.value} steps/s`;
    });
    fillSelect("pg-lr", OPTIONS.lr, state.s.lr);
    fillSelect("pg-activation", OPTIONS.activation, state.s.activation);
    fillSelect("pg-reg", OPTIONS.reg, state.s.reg);
    fillSelect("pg-rate", OPTIONS.rate, state.s.rate);
    fillSelect("pg-view", OPTIONS.view, state.s.view);
    fillSelect("pg-problem", ["classification", "regression"], task());
    $("pg-problem").options[0].textContent = "Classify";
    $("pg-problem").options[1].textContent = "Regress";
    for (const key of ["speed", "lr", "activation", "reg", "rate", "view"]) {
      $(`pg-${key}`).onchange = (ev) => set(key, ev.target.value);
    }
    $("pg-problem").onchange = (ev) => {
      const sets = ev.target.value === "regression" ? E.REGRESSION_SETS : E.CLASSIFICATION_SETS;
      set("dataset", sets[0]);
    };
    for (const key of ["train", "noise", "batch"]) {
      $(`pg-${key}`).oninput = (ev) => set(key, ev.target.value);
    }
    $("pg-seed").onchange = (ev) => {
      const v = Math.max(0, Math.min(999999, parseInt(ev.target.value, 10) || 0));
      set("seed", v);
    };
    $("pg-reseed").onclick = () => set("seed", Math.floor(Math.random() * 1000000));
    $("pg-showtest").onchange = (ev) => set("test", ev.target.checked ? "1" : "0");
    $("pg-discrete").onchange = (ev) => set("discrete", ev.target.checked ? "1" : "0");
    $("pg-play").onclick = () => {
      state.playing = !state.playing;
      state.lastT = null;
      syncControls();
    };
    $("pg-step").onclick = () => {
      state.playing = false;
      if (isFinite(state.session.loss0)) state.session.step();
      state.dirty = true;
      syncControls();
    };
    $("pg-reset").onclick = () => {
      state.playing = false;
      rebuild();
      syncControls();
    };
    $("pg-addlayer").onclick = () => {
      const h = hiddenSizes();
      if (h.length < MAX_LAYERS) set("hidden", [...h, h.length ? h[h.length - 1] : 4].join(","));
    };
    $("pg-droplayer").onclick = () => {
      const h = hiddenSizes();
      if (h.length) set("hidden", h.slice(0, -1).join(","));
    };
    const net = $("pg-net");
    net.onmousemove = (ev) => {
      const r = net.getBoundingClientRect();
      state.hoverNet = { x: ev.clientX - r.left, y: ev.clientY - r.top };
      state.mouse = { x: ev.clientX, y: ev.clientY };
      state.dirty = true;
    };
    net.onmouseleave = () => {
      state.hoverNet = null;
      hideTip();
    };
    net.onclick = (ev) => {
      const r = net.getBoundingClientRect();
      const hit = hitNetwork(ev.clientX - r.left, ev.clientY - r.top);
      if (hit && hit.kind === "feature" && !state.hide.has("features")) toggleFeature(hit.id);
    };
    const loss = $("pg-loss");
    loss.onmousemove = (ev) => {
      const r = loss.getBoundingClientRect();
      const g = state.lossGeometry;
      if (!g || g.steps === 0) return;
      const i = Math.round(((ev.clientX - r.left - g.left) / g.pw) * g.steps);
      state.hoverLoss = Math.max(0, Math.min(g.steps, i));
      state.mouse = { x: ev.clientX, y: ev.clientY };
      state.dirty = true;
    };
    loss.onmouseleave = () => {
      state.hoverLoss = null;
      state.dirty = true;
      hideTip();
    };
  }

  function toggleFeature(id) {
    const f = featureList();
    const next = f.includes(id) ? f.filter((x) => x !== id) : [...f, id];
    if (!next.length) return; // the network needs at least one input
    set("features", E.FEATURE_IDS.filter((x) => next.includes(x)).join(","));
  }

  function syncControls() {
    const s = state.s;
    $("pg-play").classList.toggle("playing", state.playing);
    const diverged = state.session && !isFinite(state.session.loss0);
    $("pg-play").disabled = diverged;
    $("pg-step").disabled = diverged;
    $("pg-play").setAttribute("aria-label", state.playing ? "Pause" : "Play");
    $("pg-play").title = state.playing ? "Pause" : "Play";
    for (const key of ["speed", "lr", "activation", "reg", "rate", "view"]) $(`pg-${key}`).value = s[key];
    $("pg-problem").value = task();
    $("pg-rate").disabled = s.reg === "none";
    for (const key of ["train", "noise", "batch"]) $(`pg-${key}`).value = s[key];
    const nTrain = state.session ? state.session.yTrain.length : 0;
    $("pg-train-v").textContent = `${s.train}% (${nTrain})`;
    $("pg-noise-v").textContent = (+s.noise).toFixed(2);
    $("pg-batch-v").textContent = s.batch;
    $("pg-seed").value = s.seed;
    $("pg-showtest").checked = s.test === "1";
    $("pg-discrete").checked = s.discrete === "1";
    const h = hiddenSizes();
    $("pg-layers-title").textContent = h.length === 1 ? "1 hidden layer" :
      `${h.length} hidden layers`;
    $("pg-addlayer").disabled = h.length >= MAX_LAYERS;
    $("pg-droplayer").disabled = h.length === 0;
    document.querySelectorAll(".sets button").forEach((b) => {
      b.classList.toggle("on", b.dataset.name === s.dataset);
    });
  }

  function applyHide() {
    D.relayout();
    document.querySelectorAll("[data-key]").forEach((el) => {
      el.classList.toggle("hiddenctl", state.hide.has(el.dataset.key));
    });
    const noData = DATA_KEYS.every((k) => state.hide.has(k));
    document.getElementById("pg").classList.toggle("nodata", noData);
    state.layoutChanged = true;
    state.dirty = true;
  }

  // -- the data thumbnails ------------------------------------------------------------------
  function drawThumbnails() {
    const box = $("pg-sets");
    const sets = task() === "regression" ? E.REGRESSION_SETS : E.CLASSIFICATION_SETS;
    const key = `${sets.join()}|${state.s.noise}|${state.s.seed}`;
    if (box.dataset.key !== key) {
      box.dataset.key = key;
      box.innerHTML = "";
      for (const name of sets) {
        const b = document.createElement("button");
        b.dataset.name = name;
        b.title = name;
        b.setAttribute("aria-label", `Data set ${name}`);
        const c = document.createElement("canvas");
        b.appendChild(c);
        box.appendChild(b);
        b.onclick = () => set("dataset", name);
        requestAnimationFrame(() => {
          const { ctx, w, h } = D.fit(c);
          ctx.fillStyle = "#f6f6f8";
          ctx.fillRect(0, 0, w, h);
          const d = E.makeData(name, { points: 160, noise: +state.s.noise, seed: +state.s.seed });
          for (const p of [...d.train, ...d.test]) {
            const t = name in { plane: 1, multigauss: 1 } ? p[2] : p[2] ? 1 : -1;
            ctx.fillStyle = t < 0 ? `rgba(8,119,189,${0.35 + 0.65 * Math.abs(t)})` :
              `rgba(245,147,34,${0.35 + 0.65 * Math.abs(t)})`;
            ctx.fillRect(((p[0] + 1.2) / 2.4) * w - 1, ((1.2 - p[1]) / 2.4) * h - 1, 2.2, 2.2);
          }
        });
      }
    }
    syncControls();
  }

  // -- drawing --------------------------------------------------------------------------------
  function featureImages(extent) {
    const imgs = {};
    for (const id of E.FEATURE_IDS) {
      const f = E.FEATURES[id].f;
      const vals = new Float64Array(GRID * GRID);
      for (let r = 0; r < GRID; r++) {
        const y = extent - (2 * extent * r) / (GRID - 1);
        for (let c = 0; c < GRID; c++) vals[r * GRID + c] = f(-extent + (2 * extent * c) / (GRID - 1), y);
      }
      const src = D.heatImage(vals, 0, GRID, (v) => v / extent);
      const keep = document.createElement("canvas");
      keep.width = keep.height = GRID;
      keep.getContext("2d").drawImage(src, 0, 0);
      imgs[id] = keep;
    }
    return imgs;
  }

  function graph(S, vec, neurons) {
    const lay = S.net.lay;
    const active = featureList();
    const showAll = !state.hide.has("features");
    const inputIds = showAll ? E.FEATURE_IDS : active;
    const columns = [{
      nodes: inputIds.map((id) => ({
        label: E.FEATURES[id].label, image: state.featureImages[id],
        active: active.includes(id), id,
      })),
    }];
    const N = GRID * GRID;
    for (let l = 1; l < lay.sizes.length - 1; l++) {
      const vals = state.planes[l];
      columns.push({
        nodes: Array.from({ length: lay.sizes[l] }, (_, j) => ({
          image: copyImage(vals, j * N),
          lca: neurons[l - 1][j],
        })),
      });
    }
    const outNames = S.task === "regression" ? ["output"] : ["blue", "orange"];
    const fills = { blue: "#9ccbe8", orange: "#fbcf9c" };
    const last = state.planes.length - 1;
    columns.push({
      nodes: outNames.map((name, j) => ({
        label: name, lca: neurons[lay.layers.length - 1][j], fill: fills[name],
        image: S.task === "regression" ? copyImage(state.planes[last], 0) : undefined,
      })),
    });
    const rowOf = active.map((id) => inputIds.indexOf(id));
    const edges = [];
    lay.layers.forEach((L, l) => {
      for (let j = 0; j < L.nOut; j++) {
        for (let i = 0; i < L.nIn; i++) {
          edges.push({
            from: [l, l === 0 ? rowOf[i] : i], to: [l + 1, j], lca: vec[L.w + j * L.nIn + i],
            layer: l, i, j, index: L.w + j * L.nIn + i,
          });
        }
      }
    });
    return { columns, edges };
  }

  const imagePool = [];
  let imageUse = 0;
  /** One neuron's map, painted into its own pooled canvas (reused frame after frame). */
  function copyImage(vals, offset) {
    if (!imagePool[imageUse]) imagePool[imageUse] = document.createElement("canvas");
    return D.heatImage(vals, offset, GRID, (v) => v, 0.85, imagePool[imageUse++]);
  }

  function layerName(l, count) {
    return l === count - 1 ? "out" : `fc${l + 1}`;
  }

  function draw() {
    const S = state.session;
    const h = S.history;
    const steps = S.steps;
    imageUse = 0;
    setHtml("pg-stepno", steps.toLocaleString("en-US"));
    const cls = S.task === "classification";
    const pct = (v) => (isFinite(v) ? `${Math.round(100 * v)}%` : "–");
    setHtml("pg-metrics",
      `<span>Training loss<br><b>${D.formatNum(h.trainLoss[steps])}</b></span>` +
      `<span>Test loss<br><b>${D.formatNum(h.testLoss[steps])}</b></span>` +
      (cls ? `<span>Training accuracy<br><b>${pct(h.trainAcc[steps])}</b></span>` +
        `<span>Test accuracy<br><b>${pct(h.testAcc[steps])}</b></span>` : ""));

    const view = viewName();
    const vec = S.lcaVector(view);
    const neurons = S.neuronLca(vec);
    state.planes = S.planeValues(GRID, state.extent);
    const g = graph(S, vec, neurons);
    state.graph = g;
    state.geometry = D.network($("pg-net"), g, 30);
    if (state.layoutChanged) placeNeuronButtons();

    const last = state.planes.length - 1;
    const discrete = state.s.discrete === "1";
    const map = cls ? (p) => (discrete ? (p > 0.5 ? 1 : -1) : 2 * p - 1)
      : (v) => (discrete ? Math.sign(v) : v);
    D.plane($("pg-boundary"), {
      image: D.heatImage(state.planes[last], 0, GRID, map, 0.7), extent: state.extent,
      train: S.data.train, test: S.data.test, showTest: state.s.test === "1", task: S.task,
      discrete,
    });
    state.lossGeometry = D.lossCurve($("pg-loss"), h, steps, state.hoverLoss);
    const names = S.net.lay.layers.map((_, l) => layerName(l, S.net.lay.layers.length));
    const totals = neurons.map((n) => n.reduce((a, b) => a + b, 0));
    D.layerBars($("pg-bars"), names, totals);
    const span = view === "recent" ? S.recentSteps() : steps;
    const sumA = totals.reduce((a, b) => a + b, 0);
    const dL = h.trainLoss[steps] - h.trainLoss[steps - span];
    const over = view === "recent" ? `the last ${span} steps` : `all ${steps} steps`;
    setHtml("pg-sum", !isFinite(S.loss0)
      ? `<b class="bad">The loss became too large to compute at step ${steps}: learning rate ` +
        `${state.s.lr} is too big for this network; pick a smaller one or press Reset.</b>`
      : steps === 0
      ? "Press Play or Step: each layer's share of the loss change appears here."
      : `Over ${over}, the shares add up to <b>${D.formatNum(sumA)}</b>; the training loss ` +
        `changed by <b>${D.formatNum(dL)}</b>.` + missed(sumA, dL));
    setHtml("pg-netnote", steps === 0
      ? "press Play: the lines take colour as the network learns"
      : "thicker = more; hover a line or neuron");
    updateTips(g);
    state.stats.drawn++;
  }

  /** A sentence when the shares visibly miss the loss change (large steps for the curvature). */
  function missed(sumA, dL) {
    const gap = dL - sumA;
    if (!(Math.abs(gap) > 0.02 * Math.abs(dL) + 1e-4)) return "";
    return ` The ${D.formatNum(gap)} left over is what the 3-point rule missed: the steps are ` +
      "large for how curved the loss is (a smaller learning rate closes the gap).";
  }

  const shown = {};
  /** Replace an element's content only when it changed (no needless layout work per frame). */
  function setHtml(id, html) {
    if (shown[id] === html) return;
    shown[id] = html;
    $(id).innerHTML = html;
  }

  function placeNeuronButtons() {
    state.layoutChanged = false;
    const box = $("pg-neuronbtns");
    box.innerHTML = "";
    if (state.hide.has("hidden")) return;
    const h = hiddenSizes();
    const colX = state.geometry.colX;
    const tight = colX.length > 1 && colX[1] - colX[0] < 70; // many layers on a narrow screen
    h.forEach((n, l) => {
      const x = colX[l + 1];
      const pair = document.createElement("div");
      pair.className = tight ? "pair tight" : "pair";
      pair.style.left = `${x}px`;
      pair.style.top = "2px";
      const plus = document.createElement("button");
      plus.textContent = "+";
      plus.title = `Add a neuron to hidden layer ${l + 1}`;
      plus.disabled = n >= MAX_NEURONS;
      plus.onclick = () => {
        const hh = hiddenSizes();
        hh[l] = Math.min(MAX_NEURONS, hh[l] + 1);
        set("hidden", hh.join(","));
      };
      const minus = document.createElement("button");
      minus.textContent = "\u2212";
      minus.title = `Remove a neuron from hidden layer ${l + 1}`;
      minus.disabled = n <= 1;
      minus.onclick = () => {
        const hh = hiddenSizes();
        hh[l] = Math.max(1, hh[l] - 1);
        set("hidden", hh.join(","));
      };
      const label = document.createElement("span");
      label.textContent = `${n}`;
      pair.append(plus, minus);
      if (!tight) pair.append(label);
      box.appendChild(pair);
    });
  }

  // -- hover ----------------------------------------------------------------------------------
  function hitNetwork(x, y) {
    const geo = state.geometry;
    const g = state.graph;
    if (!geo || !g) return null;
    for (let c = 0; c < geo.boxes.length; c++) {
      for (let i = 0; i < geo.boxes[c].length; i++) {
        const b = geo.boxes[c][i];
        const m = b.ring || 0;
        if (x >= b.x - m && x <= b.x + b.s + m && y >= b.y - m && y <= b.y + b.s + m) {
          const node = g.columns[c].nodes[i];
          if (c === 0) return { kind: "feature", id: node.id, node };
          return { kind: "neuron", c, i, node };
        }
      }
    }
    let best = null;
    let bestD = Infinity;
    for (const s of geo.segs) {
      const dx = s.x2 - s.x1;
      const dy = s.y2 - s.y1;
      const t = Math.max(0, Math.min(1, ((x - s.x1) * dx + (y - s.y1) * dy) / (dx * dx + dy * dy)));
      const d = Math.hypot(x - (s.x1 + t * dx), y - (s.y1 + t * dy));
      if (d < bestD) {
        bestD = d;
        best = s;
      }
    }
    if (best && bestD <= Math.max(4, best.width / 2 + 2)) return { kind: "edge", seg: best };
    return null;
  }

  function verdict(v) {
    if (v < 0) return '<span class="helped">helped</span> (lowered the loss)';
    if (v > 0) return '<span class="hurt">hurt</span> (raised the loss)';
    return "has not changed the loss yet";
  }

  function updateTips() {
    const S = state.session;
    const view = viewName();
    const over = view === "recent" ? `the last ${S.recentSteps()} steps` : "the whole session";
    if (state.hoverLoss !== null) {
      const i = state.hoverLoss;
      const h = S.history;
      const stepLine = i > 0
        ? `<br>step ${i}: Σ LCA ${D.formatNum(h.lca[i])}, loss change ` +
          `${D.formatNum(h.trainLoss[i] - h.trainLoss[i - 1])}` : "<br>before the first step";
      showTip(`<b>Step ${i}</b><br>training loss ${D.formatNum(h.trainLoss[i])}` +
        `<br>test loss ${D.formatNum(h.testLoss[i])}${stepLine}`);
      return;
    }
    if (!state.hoverNet) return;
    const hit = hitNetwork(state.hoverNet.x, state.hoverNet.y);
    if (!hit) {
      hideTip();
      return;
    }
    const lay = S.net.lay;
    const count = lay.layers.length;
    const p = S.params;
    const vec = S.lcaVector(view);
    if (hit.kind === "feature") {
      const on = featureList().includes(hit.id);
      const click = state.hide.has("features") ? "" : `<br>click to turn it ${on ? "off" : "on"}`;
      showTip(`<b>Input ${E.FEATURES[hit.id].label}</b> (${on ? "used" : "not used"})${click}`);
    } else if (hit.kind === "neuron") {
      const l = hit.c - 1;
      const L = lay.layers[l];
      const name = layerName(l, count);
      const who = l === count - 1
        ? (S.task === "regression" ? "the output" : `the ${hit.node.label} score`)
        : `neuron ${hit.i + 1}`;
      showTip(`<b>${name}, ${who}</b> (${L.nIn} incoming weights + bias)<br>` +
        `LCA over ${over}: <b>${D.formatNum(hit.node.lca)}</b>, ${verdict(hit.node.lca)}` +
        `<br>bias ${D.formatNum(p[L.b + hit.i])} (its LCA ${D.formatNum(vec[L.b + hit.i])})`);
    } else {
      const e = hit.seg.e;
      const name = layerName(e.layer, count);
      const src = e.layer === 0 ? E.FEATURES[featureList()[e.i]].label : `neuron ${e.i + 1}`;
      const dst = e.layer === count - 1
        ? (S.task === "regression" ? "output" : `${["blue", "orange"][e.j]} score`)
        : `neuron ${e.j + 1}`;
      showTip(`<b>Weight ${name}: ${src} → ${dst}</b><br>value ${D.formatNum(p[e.index])}` +
        `<br>LCA over ${over}: <b>${D.formatNum(e.lca)}</b>, ${verdict(e.lca)}`);
    }
  }

  function showTip(html) {
    const tip = $("pg-tip");
    tip.innerHTML = html;
    tip.hidden = false;
    const w = tip.offsetWidth;
    const hh = tip.offsetHeight;
    let x = state.mouse.x + 14;
    let y = state.mouse.y + 14;
    if (x + w > window.innerWidth - 4) x = state.mouse.x - w - 10;
    if (y + hh > window.innerHeight - 4) y = state.mouse.y - hh - 10;
    tip.style.left = `${Math.max(2, x)}px`;
    tip.style.top = `${Math.max(2, y)}px`;
  }
  function hideTip() {
    $("pg-tip").hidden = true;
  }

  // -- the loop -------------------------------------------------------------------------------
  let acc = 0;
  function frame(t) {
    requestAnimationFrame(frame);
    if (!state.ready) return;
    state.stats.frames++;
    let stepped = 0;
    if (state.playing) {
      const dt = state.lastT == null ? 16 : Math.min(100, t - state.lastT);
      const t0 = performance.now();
      const S = state.session;
      if (state.s.speed === "max") {
        do {
          S.step();
          stepped++;
        } while (performance.now() - t0 < 18 && stepped < 2000 && isFinite(S.loss0));
      } else {
        acc += (+state.s.speed * dt) / 1000;
        let n = Math.floor(acc);
        acc -= n;
        while (n-- > 0 && isFinite(S.loss0)) {
          S.step();
          stepped++;
          if (performance.now() - t0 > 40) { // the machine cannot keep up: drop the backlog
            acc = 0;
            break;
          }
        }
      }
      state.stats.stepsPlayed += stepped;
      if (!isFinite(S.loss0)) state.playing = false; // diverged: draw it once, then stop
    }
    state.lastT = t;
    if (stepped || state.dirty) {
      state.dirty = false;
      draw();
      if (stepped && !state.playing) syncControls();
    }
  }

  // Space plays / pauses (a presenter's clicker or keyboard), unless typing in a control.
  document.addEventListener("keydown", (ev) => {
    if (ev.key !== " " || !state.ready) return;
    if (ev.target.closest && ev.target.closest("input, select, button")) return;
    ev.preventDefault();
    $("pg-play").click();
  });

  window.addEventListener("resize", () => {
    D.relayout();
    state.layoutChanged = true;
    state.dirty = true;
    requestAnimationFrame(reportHeight);
  });
  if (window.ResizeObserver) {
    new ResizeObserver(() => {
      D.relayout();
      state.dirty = true;
      reportHeight();
    }).observe($("pg"));
  }

  window.PG = {
    ready: false, state, get session() { return state.session; }, stats: state.stats,
    set, play: () => { if (!state.playing) $("pg-play").click(); },
  };
  requestAnimationFrame(frame);
  post("streamlit:componentReady", { apiVersion: 1 });
  if (!embedded) {
    const q = Object.fromEntries(new URLSearchParams(window.location.search));
    if (q.hide) state.hide = new Set(q.hide.split(","));
    start(q);
  }
})();
