/* The Playground's numbers, in the student's browser: toy data, a small MLP, SGD, and LCA.
 *
 * This file has no DOM code, so the tests load it alone in a page and compare its numbers with
 * `lca.allocate` (tests/test_playground_js.py). The definitions are those of lca/:
 *   - the network is lca.models.MLP: fc1 … fcK, out; He-normal (fan-in) init with the
 *     activation's gain, zero biases; classification has two logits and cross-entropy (mean),
 *     regression one linear output and mean squared error;
 *   - LCA of an optimizer step θ_t → θ_{t+1}: A_i = Δ_i · (g_i(0) + 4 g_i(½) + g_i(1)) / 6
 *     (Simpson 1-4-1, "rk4" in lca.integrate), each g the full-batch gradient of the data loss on
 *     the training points; the end gradient is reused as the next step's start gradient, so a
 *     step costs two full-batch gradients. Σ_i A_i ≈ L(θ_{t+1}) − L(θ_t).
 * Regularization (L1/L2) changes the step, not the measured loss: LCA allocates the change in
 * the training data loss, as lca/ does for weight decay.
 * The flat parameter vector is in torch's named_parameters() order (fc1.weight row-major
 * (out, in), fc1.bias, …, out.weight, out.bias) so a test can compare it element by element.
 */
(function (root) {
  "use strict";

  const CLASSIFICATION_SETS = ["circles", "xor", "gauss", "spiral", "moons"];
  const REGRESSION_SETS = ["plane", "multigauss"];
  const ACTIVATIONS = ["tanh", "relu", "sigmoid", "gelu", "linear"];
  const GAINS = { tanh: 5 / 3, relu: Math.SQRT2, gelu: Math.SQRT2, sigmoid: 1, linear: 1 };
  // Input features (TensorFlow Playground's). The plane spans −1…1, so sin takes π·x (one wave).
  const FEATURES = {
    x1: { label: "x\u2081", f: (a) => a },
    x2: { label: "x\u2082", f: (a, b) => b },
    x1sq: { label: "x\u2081\u00b2", f: (a) => a * a },
    x2sq: { label: "x\u2082\u00b2", f: (a, b) => b * b },
    x1x2: { label: "x\u2081x\u2082", f: (a, b) => a * b },
    sin1: { label: "sin \u03c0x\u2081", f: (a) => Math.sin(Math.PI * a) },
    sin2: { label: "sin \u03c0x\u2082", f: (a, b) => Math.sin(Math.PI * b) },
  };
  const FEATURE_IDS = Object.keys(FEATURES);
  const RECENT_WINDOW = 20;

  // -- seeded randomness (one independent stream per purpose, like data/splits.rng_for) -------
  function makeRng(seed, stream) {
    let a = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(stream + 1, 0x85ebca77)) >>> 0;
    const next = () => {
      a = (a + 0x6d2b79f5) | 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    for (let i = 0; i < 4; i++) next(); // let the mixed seed settle
    let spare = null;
    return {
      uniform: (lo = 0, hi = 1) => lo + (hi - lo) * next(),
      normal: (mean = 0, std = 1) => {
        if (spare !== null) {
          const v = spare;
          spare = null;
          return mean + std * v;
        }
        let u = 0;
        while (u <= 1e-300) u = next();
        const r = Math.sqrt(-2 * Math.log(u));
        const th = 2 * Math.PI * next();
        spare = r * Math.sin(th);
        return mean + std * r * Math.cos(th);
      },
      permutation: (n) => {
        const p = Array.from({ length: n }, (_, i) => i);
        for (let i = n - 1; i > 0; i--) {
          const j = Math.floor(next() * (i + 1));
          [p[i], p[j]] = [p[j], p[i]];
        }
        return p;
      },
    };
  }
  const STREAM = { generate: 0, noise: 3, split: 1, init: 4, batches: 5 };

  // -- data: the shapes of data/toy.py (same conventions: points in [-1, 1], class 1 orange) ----
  function halves(n) {
    return [n - Math.floor(n / 2), Math.floor(n / 2)];
  }
  const GENERATORS = {
    spiral(n, r) {
      const out = [];
      const [n0, n1] = halves(n);
      for (const [label, count, phase] of [[0, n0, Math.PI], [1, n1, 0]]) {
        for (let i = 0; i < count; i++) {
          const rad = r.uniform();
          const t = 1.75 * 2 * Math.PI * rad + phase;
          out.push([rad * Math.sin(t), rad * Math.cos(t), label]);
        }
      }
      return out;
    },
    circles(n, r) {
      const out = [];
      const [n0, n1] = halves(n);
      for (const [label, count, lo, hi] of [[0, n0, 0.7, 1.0], [1, n1, 0.0, 0.5]]) {
        for (let i = 0; i < count; i++) {
          const rad = r.uniform(lo, hi);
          const ang = r.uniform(0, 2 * Math.PI);
          out.push([rad * Math.sin(ang), rad * Math.cos(ang), label]);
        }
      }
      return out;
    },
    xor(n, r) {
      const out = [];
      const pad = 0.05;
      for (let i = 0; i < n; i++) {
        let x = r.uniform(-1, 1);
        let y = r.uniform(-1, 1);
        x = (x + (x >= 0 ? pad : -pad)) / (1 + pad);
        y = (y + (y >= 0 ? pad : -pad)) / (1 + pad);
        out.push([x, y, x * y >= 0 ? 1 : 0]);
      }
      return out;
    },
    gauss(n, r) {
      const out = [];
      const [n0, n1] = halves(n);
      for (const [label, count, c] of [[0, n0, -1 / 3], [1, n1, 1 / 3]]) {
        for (let i = 0; i < count; i++) out.push([r.normal(c, 0.12), r.normal(c, 0.12), label]);
      }
      return out;
    },
    moons(n, r) {
      const out = [];
      const [n0, n1] = halves(n);
      for (let i = 0; i < n0; i++) {
        const t = r.uniform(0, Math.PI);
        out.push([(Math.cos(t) - 0.5) / 1.5, (Math.sin(t) - 0.25) / 1.5, 0]);
      }
      for (let i = 0; i < n1; i++) {
        const t = r.uniform(0, Math.PI);
        out.push([(1 - Math.cos(t) - 0.5) / 1.5, (0.5 - Math.sin(t) - 0.25) / 1.5, 1]);
      }
      return out;
    },
    // Regression targets in [-1, 1] (TensorFlow Playground's two regression sets).
    plane(n, r) {
      const out = [];
      for (let i = 0; i < n; i++) {
        const x = r.uniform(-1, 1);
        const y = r.uniform(-1, 1);
        out.push([x, y, (x + y) / 2]);
      }
      return out;
    },
    multigauss(n, r) {
      const bumps = [
        [-0.6, 0.6, 1], [0, 0.6, -1], [0.6, 0.6, 1], [-0.6, 0, -1], [0, 0, 1],
        [0.6, 0, -1], [-0.6, -0.6, 1], [0, -0.6, -1], [0.6, -0.6, 1],
      ];
      const out = [];
      for (let i = 0; i < n; i++) {
        const x = r.uniform(-1, 1);
        const y = r.uniform(-1, 1);
        let v = 0;
        for (const [cx, cy, s] of bumps) {
          v += s * Math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.18 * 0.18));
        }
        out.push([x, y, Math.max(-1, Math.min(1, v))]);
      }
      return out;
    },
  };

  /** Points of one toy set, split: {train: [[x1, x2, label]…], test: […]}. */
  function makeData(name, { points = 400, noise = 0.05, trainFraction = 0.5, seed = 0 } = {}) {
    if (!(name in GENERATORS)) throw new Error(`Unknown data set ${name}`);
    const pts = GENERATORS[name](points, makeRng(seed, STREAM.generate));
    if (noise > 0) {
      const r = makeRng(seed, STREAM.noise);
      for (const p of pts) {
        p[0] += r.normal(0, noise);
        p[1] += r.normal(0, noise);
      }
    }
    const order = makeRng(seed, STREAM.split).permutation(pts.length);
    const nTrain = Math.min(Math.max(Math.round(pts.length * trainFraction), 1), pts.length - 1);
    return {
      train: order.slice(0, nTrain).map((i) => pts[i]),
      test: order.slice(nTrain).map((i) => pts[i]),
    };
  }

  // -- erf to double precision (GELU is x·Φ(x) with the exact erf, as torch's nn.GELU) --------
  function erf(x) {
    const ax = Math.abs(x);
    if (ax > 6) return Math.sign(x);
    if (ax < 2.5) {
      // erf(x) = 2/√π · e^{−x²} · Σ 2ⁿ x^{2n+1} / (1·3·…·(2n+1)): positive terms, no cancellation.
      let term = ax;
      let sum = ax;
      const x2 = 2 * ax * ax;
      for (let k = 1; k < 200; k++) {
        term *= x2 / (2 * k + 1);
        sum += term;
        if (term < 1e-17 * sum) break;
      }
      return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * Math.exp(-ax * ax) * sum;
    }
    // erfc by its continued fraction (Lentz), accurate for x ≥ 2.5.
    const tiny = 1e-300;
    let f = ax;
    let C = ax;
    let D = 0;
    for (let k = 1; k < 300; k++) {
      const a = k / 2;
      D = ax + a * D;
      D = D === 0 ? tiny : 1 / D;
      C = ax + a / C;
      if (C === 0) C = tiny;
      const delta = C * D;
      f *= delta;
      if (Math.abs(delta - 1) < 1e-16) break;
    }
    const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
    return Math.sign(x) * (1 - erfc);
  }

  const ACT = {
    tanh: { f: (z) => Math.tanh(z), d: (z, a) => 1 - a * a },
    relu: { f: (z) => (z > 0 ? z : 0), d: (z) => (z > 0 ? 1 : 0) },
    sigmoid: { f: (z) => 1 / (1 + Math.exp(-z)), d: (z, a) => a * (1 - a) },
    gelu: {
      f: (z) => 0.5 * z * (1 + erf(z / Math.SQRT2)),
      d: (z) => 0.5 * (1 + erf(z / Math.SQRT2)) + z * Math.exp(-0.5 * z * z) / Math.sqrt(2 * Math.PI),
    },
    linear: { f: (z) => z, d: () => 1 },
  };

  // -- the network --------------------------------------------------------------------------
  /** Layer sizes [inputs, hidden…, outputs] -> parameter layout in torch order. */
  function layout(sizes) {
    const layers = [];
    let at = 0;
    for (let l = 1; l < sizes.length; l++) {
      const nIn = sizes[l - 1];
      const nOut = sizes[l];
      layers.push({ nIn, nOut, w: at, b: at + nIn * nOut });
      at += nIn * nOut + nOut;
    }
    return { sizes: sizes.slice(), layers, count: at };
  }

  function initParams(lay, activation, seed) {
    const r = makeRng(seed, STREAM.init);
    const p = new Float64Array(lay.count);
    const gain = GAINS[activation];
    for (const L of lay.layers) {
      const std = gain / Math.sqrt(L.nIn);
      for (let i = 0; i < L.nIn * L.nOut; i++) p[L.w + i] = r.normal(0, std);
    }
    return p;
  }

  /** Work arrays for one point's forward/backward pass (allocated once per network). */
  function scratch(lay) {
    return {
      z: lay.sizes.map((n) => new Float64Array(n)),
      a: lay.sizes.map((n) => new Float64Array(n)),
      d: lay.sizes.map((n) => new Float64Array(n)),
    };
  }

  /** Forward one input vector; returns the output activations (s.a[last]). */
  function forward(lay, act, p, x, s) {
    const a0 = s.a[0];
    for (let i = 0; i < a0.length; i++) a0[i] = x[i];
    const last = lay.layers.length - 1;
    for (let l = 0; l <= last; l++) {
      const L = lay.layers[l];
      const aIn = s.a[l];
      const z = s.z[l + 1];
      const aOut = s.a[l + 1];
      for (let j = 0; j < L.nOut; j++) {
        let v = p[L.b + j];
        const row = L.w + j * L.nIn;
        for (let i = 0; i < L.nIn; i++) v += p[row + i] * aIn[i];
        z[j] = v;
        aOut[j] = l === last ? v : act.f(v);
      }
    }
    return s.a[last + 1];
  }

  /** Loss of one output against its target, writing dLoss/dOutput into `dOut`. */
  function pointLoss(task, out, target, dOut) {
    if (task === "regression") {
      const e = out[0] - target;
      if (dOut) dOut[0] = 2 * e;
      return e * e;
    }
    const m = Math.max(out[0], out[1]);
    const e0 = Math.exp(out[0] - m);
    const e1 = Math.exp(out[1] - m);
    const lse = m + Math.log(e0 + e1);
    if (dOut) {
      dOut[0] = e0 / (e0 + e1) - (target === 0 ? 1 : 0);
      dOut[1] = e1 / (e0 + e1) - (target === 1 ? 1 : 0);
    }
    return lse - out[target];
  }

  /** Mean loss over rows `idx` (all rows when null) of inputs X; mean gradient into `grad`. */
  function lossAndGrad(net, p, X, Y, idx, grad) {
    const { lay, act, task, s } = net;
    const n = idx ? idx.length : Y.length;
    if (grad) grad.fill(0);
    let total = 0;
    const last = lay.layers.length;
    for (let r = 0; r < n; r++) {
      const k = idx ? idx[r] : r;
      const out = forward(lay, act, p, X[k], s);
      total += pointLoss(task, out, Y[k], grad ? s.d[last] : null);
      if (!grad) continue;
      for (let l = last - 1; l >= 0; l--) {
        const L = lay.layers[l];
        const dOut = s.d[l + 1];
        if (l < last - 1) {
          const z = s.z[l + 1];
          const a = s.a[l + 1];
          for (let j = 0; j < L.nOut; j++) dOut[j] *= act.d(z[j], a[j]);
        }
        const aIn = s.a[l];
        const dIn = s.d[l];
        if (l > 0) dIn.fill(0);
        for (let j = 0; j < L.nOut; j++) {
          const dj = dOut[j];
          grad[L.b + j] += dj;
          const row = L.w + j * L.nIn;
          for (let i = 0; i < L.nIn; i++) {
            grad[row + i] += dj * aIn[i];
            if (l > 0) dIn[i] += dj * p[row + i];
          }
        }
      }
    }
    if (grad) for (let i = 0; i < grad.length; i++) grad[i] /= n;
    return total / n;
  }

  function accuracy(net, p, X, Y) {
    if (net.task === "regression" || !Y.length) return NaN;
    let right = 0;
    for (let k = 0; k < Y.length; k++) {
      const out = forward(net.lay, net.act, p, X[k], net.s);
      if ((out[1] > out[0] ? 1 : 0) === Y[k]) right++;
    }
    return right / Y.length;
  }

  function featurize(points, features) {
    const fs = features.map((id) => FEATURES[id].f);
    return points.map((pt) => Float64Array.from(fs, (f) => f(pt[0], pt[1])));
  }

  /**
   * One playground session: settings in, `step()` trains one SGD step and allocates it.
   *
   * cfg: {task, dataset, points, noise, trainFraction, seed, hidden, activation, features, lr,
   *       batch, reg ("none"|"L1"|"L2"), regRate}. `inject` (tests) may give {train, test,
   *       params, batches} to replace the generated data, the initial weights and the batch order.
   */
  class Session {
    constructor(cfg, inject = {}) {
      this.cfg = Object.assign({}, cfg);
      this.inject = inject;
      this.window = RECENT_WINDOW;
      this.reset();
    }

    reset() {
      const c = this.cfg;
      const data = this.inject.train
        ? { train: this.inject.train, test: this.inject.test || [] }
        : makeData(c.dataset, {
          points: c.points, noise: c.noise, trainFraction: c.trainFraction, seed: c.seed,
        });
      this.data = data;
      this.task = c.task === "regression" ? "regression" : "classification";
      this.features = c.features.slice();
      this.xTrain = featurize(data.train, this.features);
      this.yTrain = data.train.map((p) => p[2]);
      this.xTest = featurize(data.test, this.features);
      this.yTest = data.test.map((p) => p[2]);
      const sizes = [this.features.length, ...c.hidden, this.task === "regression" ? 1 : 2];
      const lay = layout(sizes);
      this.net = { lay, act: ACT[c.activation], task: this.task, s: scratch(lay) };
      this.params = this.inject.params
        ? Float64Array.from(this.inject.params)
        : initParams(lay, c.activation, c.seed);
      const P = lay.count;
      this.grad0 = new Float64Array(P); // full-batch gradient at the current θ (reused)
      this.loss0 = lossAndGrad(this.net, this.params, this.xTrain, this.yTrain, null, this.grad0);
      this.gBatch = new Float64Array(P);
      this.gMid = new Float64Array(P);
      this.gEnd = new Float64Array(P);
      this.mid = new Float64Array(P);
      this.next = new Float64Array(P);
      this.last = new Float64Array(P); // the last step's per-parameter LCA
      this.cum = new Float64Array(P);
      this.ring = new Float64Array(this.window * P);
      this.batchRng = makeRng(c.seed, STREAM.batches);
      this.perm = [];
      this.cursor = Infinity;
      this.steps = 0;
      this.history = {
        trainLoss: [this.loss0], testLoss: [this.testLoss()],
        trainAcc: [accuracy(this.net, this.params, this.xTrain, this.yTrain)],
        testAcc: [accuracy(this.net, this.params, this.xTest, this.yTest)],
        lca: [0], error: [0],
      };
    }

    testLoss() {
      return this.yTest.length
        ? lossAndGrad(this.net, this.params, this.xTest, this.yTest, null, null) : NaN;
    }

    /** Settings that apply from the next step on, without a fresh network. */
    setLive({ lr, batch, reg, regRate }) {
      if (lr !== undefined) this.cfg.lr = lr;
      if (batch !== undefined) this.cfg.batch = batch;
      if (reg !== undefined) this.cfg.reg = reg;
      if (regRate !== undefined) this.cfg.regRate = regRate;
    }

    nextBatch() {
      if (this.inject.batches) {
        return this.inject.batches[this.steps % this.inject.batches.length];
      }
      const n = this.yTrain.length;
      const b = Math.min(Math.max(1, this.cfg.batch | 0), n);
      if (this.cursor + b > n) { // a new epoch: reshuffle (the short tail is dropped)
        this.perm = this.batchRng.permutation(n);
        this.cursor = 0;
      }
      const idx = this.perm.slice(this.cursor, this.cursor + b);
      this.cursor += b;
      return idx;
    }

    /** One SGD step on a minibatch, then its LCA on all training points. */
    step() {
      const { net, params: p, xTrain: X, yTrain: Y } = this;
      const P = p.length;
      const c = this.cfg;
      lossAndGrad(net, p, X, Y, this.nextBatch(), this.gBatch);
      const next = this.next;
      const isWeight = this.weightMask || (this.weightMask = this.makeWeightMask());
      for (let i = 0; i < P; i++) {
        let g = this.gBatch[i];
        if (isWeight[i] && c.reg === "L2") g += c.regRate * p[i];
        else if (isWeight[i] && c.reg === "L1") g += c.regRate * Math.sign(p[i]);
        let v = p[i] - c.lr * g;
        // L1 as in TensorFlow Playground: a weight that crosses zero stops at zero.
        if (isWeight[i] && c.reg === "L1" && p[i] !== 0 && Math.sign(v) !== Math.sign(p[i])) v = 0;
        next[i] = v;
      }
      for (let i = 0; i < P; i++) this.mid[i] = p[i] + 0.5 * (next[i] - p[i]);
      lossAndGrad(net, this.mid, X, Y, null, this.gMid);
      const lossEnd = lossAndGrad(net, next, X, Y, null, this.gEnd);
      const A = this.last;
      let total = 0;
      const slot = (this.steps % this.window) * P;
      for (let i = 0; i < P; i++) {
        const a = (next[i] - p[i]) * ((this.grad0[i] + 4 * this.gMid[i] + this.gEnd[i]) / 6);
        A[i] = a;
        this.cum[i] += a;
        this.ring[slot + i] = a;
        total += a;
      }
      const lossStart = this.loss0;
      p.set(next);
      this.grad0.set(this.gEnd); // the end gradient opens the next step
      this.loss0 = lossEnd;
      this.steps += 1;
      const h = this.history;
      h.trainLoss.push(lossEnd);
      h.testLoss.push(this.testLoss());
      h.trainAcc.push(accuracy(net, p, X, Y));
      h.testAcc.push(accuracy(net, p, this.xTest, this.yTest));
      h.lca.push(total);
      h.error.push(lossEnd - lossStart - total);
      return this.steps;
    }

    makeWeightMask() {
      const m = new Uint8Array(this.params.length);
      for (const L of this.net.lay.layers) m.fill(1, L.w, L.w + L.nIn * L.nOut);
      return m;
    }

    /** Per-parameter LCA over the whole session ("cumulative") or the last steps ("recent"). */
    lcaVector(view) {
      if (view !== "recent") return this.cum;
      const P = this.params.length;
      const out = new Float64Array(P);
      const k = Math.min(this.steps, this.window);
      for (let r = 0; r < k; r++) {
        const off = r * P;
        for (let i = 0; i < P; i++) out[i] += this.ring[off + i];
      }
      return out;
    }

    recentSteps() {
      return Math.min(this.steps, this.window);
    }

    /** Per layer, each neuron's LCA: its incoming weights plus its bias. */
    neuronLca(vec) {
      return this.net.lay.layers.map((L) => {
        const out = new Float64Array(L.nOut);
        for (let j = 0; j < L.nOut; j++) {
          let v = vec[L.b + j];
          for (let i = 0; i < L.nIn; i++) v += vec[L.w + j * L.nIn + i];
          out[j] = v;
        }
        return out;
      });
    }

    /**
     * Every unit's value over a size×size grid of the plane [-e, e]²: inputs (features), hidden
     * activations and the output (P(orange) for classification, the prediction for regression).
     * Returns one Float64Array per layer of shape (units, size*size); row i of the grid is y.
     */
    planeValues(size, extent) {
      const lay = this.net.lay;
      const s = this.net.s;
      const N = size * size;
      const out = lay.sizes.map((n) => new Float64Array(n * N));
      const fs = this.features.map((id) => FEATURES[id].f);
      const x = new Float64Array(fs.length);
      const last = lay.sizes.length - 1;
      for (let r = 0; r < size; r++) {
        const yv = extent - (2 * extent * r) / (size - 1);
        for (let col = 0; col < size; col++) {
          const xv = -extent + (2 * extent * col) / (size - 1);
          for (let f = 0; f < fs.length; f++) x[f] = fs[f](xv, yv);
          const o = forward(lay, this.net.act, this.params, x, s);
          const cell = r * size + col;
          for (let l = 0; l < last; l++) {
            const a = s.a[l];
            const arr = out[l];
            for (let j = 0; j < a.length; j++) arr[j * N + cell] = a[j];
          }
          if (this.task === "regression") out[last][cell] = o[0];
          else out[last][cell] = 1 / (1 + Math.exp(o[0] - o[1]));
        }
      }
      return out;
    }

    /** Half-width of the square shown: every point fits, with a small margin. */
    extent() {
      let m = 1.0;
      for (const p of this.data.train) m = Math.max(m, Math.abs(p[0]), Math.abs(p[1]));
      for (const p of this.data.test) m = Math.max(m, Math.abs(p[0]), Math.abs(p[1]));
      return Math.max(1.2, m + 0.05);
    }
  }

  const api = {
    CLASSIFICATION_SETS, REGRESSION_SETS, ACTIVATIONS, FEATURES, FEATURE_IDS, RECENT_WINDOW,
    makeRng, makeData, erf, layout, initParams, lossAndGrad, Session,
  };
  root.PGEngine = api;
  if (typeof module !== "undefined" && module.exports) module.exports = api;
})(typeof window !== "undefined" ? window : globalThis);
