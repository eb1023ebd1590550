// The page: draw on a canvas, turn the ink into the model's input, run the compiled model in onnxruntime-web
// (WebGPU where the browser has it, else wasm) and show the prediction, the relevance heatmap and the bias table.
import {
  biasTable, compiledMetadata, formatE, formatG, LrpError, summarize,
} from './onnxlrp.mjs';

const DIST = new URL('./node_modules/onnxruntime-web/dist/', import.meta.url).href;
const query = new URLSearchParams(window.location.search);

/**
 * onnxruntime-web, the build that fits: with WebGPU (ort.min.mjs: WebGPU and wasm, a 28 MB wasm file) where the
 * browser has a WebGPU adapter and ?backend=wasm is not asked, else wasm only (ort.wasm.min.mjs, 14 MB).
 */
async function loadRuntime() {
  let gpu = false;
  let note = '';
  if ((query.get('backend') || 'auto') === 'wasm') note = '';
  else if (!('gpu' in navigator)) note = 'this browser has no WebGPU';
  else {
    try {
      gpu = Boolean(await navigator.gpu.requestAdapter());
      if (!gpu) note = 'WebGPU has no adapter here';
    } catch (exc) {
      note = `WebGPU failed (${String(exc.message || exc).split('\n')[0]})`;
    }
  }
  const module = await import(`${DIST}${gpu ? 'ort.min.mjs' : 'ort.wasm.min.mjs'}`);
  module.env.wasm.wasmPaths = DIST;
  module.env.logLevel = 'error';
  if (query.has('threads')) module.env.wasm.numThreads = Number(query.get('threads'));
  return { ort: module, gpu, note };
}

const { ort, gpu: webgpu, note: runtimeNote } = await loadRuntime();

const POSITION_INPUT = 'lrp_position';
const DEFAULT_SIDE = 64; // drawn size for image inputs whose height and width are not fixed in the model
const MAX_CLASSES_SHOWN = 10;
const PEN_WIDTH = 22;

const $ = (selector) => document.querySelector(selector);
const state = {
  session: null, meta: null, spec: null, modelName: '', modelBytes: 0, backend: '', note: '', target: -1,
  runs: 0, result: null, timings: {}, threads: null, busy: false, pending: false,
};

// ---------------------------------------------------------------------------------------------------------------
// The model: metadata, session, and the image input it takes

/** The one image input of the model: {name, type, layout, dims (batch of 1), height, width, channels}. */
function imageSpec(session, meta) {
  const reserved = [meta.target_input || 'lrp_target', meta.position_input || POSITION_INPUT];
  const inputs = session.inputMetadata.filter((m) => !reserved.includes(m.name));
  if (inputs.length !== 1) {
    throw new LrpError(`the model has ${inputs.length} inputs (${inputs.map((m) => m.name).join(', ')}): ` +
      'this page draws one image');
  }
  const [spec] = inputs;
  if (!['float32', 'float64'].includes(spec.type)) {
    throw new LrpError(`input '${spec.name}' is ${spec.type}: this page draws float32 or float64 images`);
  }
  if (!(spec.name in meta.relevance)) throw new LrpError(`input '${spec.name}' carries no relevance in this model`);
  const shape = spec.shape || [];
  const fixed = (d) => (typeof d === 'number' && d > 0 ? d : null);
  const side = (d) => fixed(d) || DEFAULT_SIDE;
  const text = `(${shape.map((d) => (typeof d === 'number' ? d : d || '?')).join(', ')})`;
  const base = { name: spec.name, type: spec.type };
  if (shape.length === 2) {
    const features = fixed(shape[1]);
    const root = features && Math.round(Math.sqrt(features));
    if (!root || root * root !== features) {
      throw new LrpError(`input '${spec.name}' has shape ${text}: a flat input must have a square number of ` +
        'features to be drawn as an image');
    }
    return { ...base, layout: 'flat', height: root, width: root, channels: 1, dims: [1, features] };
  }
  if (shape.length === 3) {
    const [h, w] = [side(shape[1]), side(shape[2])];
    return { ...base, layout: 'NHW', height: h, width: w, channels: 1, dims: [1, h, w] };
  }
  if (shape.length === 4) {
    const first = fixed(shape[1]) || 0;
    const last = fixed(shape[3]) || 0;
    const channelsLast = (last > 0 && last <= 4 && first > 4) || (first <= 4 && last <= 4 && last > 0 && last < first);
    if (channelsLast) {
      const [h, w] = [side(shape[1]), side(shape[2])];
      return { ...base, layout: 'NHWC', height: h, width: w, channels: last, dims: [1, h, w, last] };
    }
    if (!first) throw new LrpError(`input '${spec.name}' has shape ${text}: its channel axis is not fixed`);
    const [h, w] = [side(shape[2]), side(shape[3])];
    return { ...base, layout: 'NCHW', height: h, width: w, channels: first, dims: [1, first, h, w] };
  }
  throw new LrpError(`input '${spec.name}' has shape ${text}: this page draws (N, F), (N, H, W), (N, C, H, W) ` +
    'or (N, H, W, C) inputs');
}

/** A session on WebGPU where the page loaded the WebGPU build (falling back to wasm if it fails), else on wasm. */
async function createSession(bytes) {
  const options = { logSeverityLevel: 3, graphOptimizationLevel: 'all' };
  let note = runtimeNote;
  if (webgpu) {
    try {
      const session = await ort.InferenceSession.create(bytes, { ...options, executionProviders: ['webgpu'] });
      return { session, backend: 'webgpu', note };
    } catch (exc) {
      note = `WebGPU failed for this model (${String(exc.message || exc).split('\n')[0]})`;
    }
  }
  const session = await ort.InferenceSession.create(bytes, { ...options, executionProviders: ['wasm'] });
  return { session, backend: 'wasm', note };
}

/** Load a compiled model from its bytes: check its metadata, start a session, size the views, explain again. */
async function loadModel(buffer, name, fetchMs = null) {
  document.body.dataset.state = 'loading';
  const bytes = new Uint8Array(buffer);
  const started = performance.now();
  try {
    const meta = compiledMetadata(bytes, name);
    const { session, backend, note } = await createSession(bytes);
    const sessionMs = performance.now() - started;
    let spec;
    try {
      spec = imageSpec(session, meta);
    } catch (exc) {
      await session.release();
      throw exc;
    }
    if (state.session) await state.session.release();
    Object.assign(state, {
      session, meta, spec, backend, note, modelName: name, modelBytes: bytes.length, target: -1, result: null,
    });
    state.timings = { sessionMs, fetchMs };
    state.threads = backend === 'wasm' ? ort.env.wasm.numThreads || 1 : null;
    for (const canvas of [$('#input-view'), $('#heatmap')]) {
      canvas.width = spec.width;
      canvas.height = spec.height;
    }
    $('#input-caption').textContent = `model input (${spec.height}×${spec.width})`;
    showMessage(note ? `${note}: running on wasm.` : '', 'note');
    updateStatus();
    document.body.dataset.state = 'ready';
    scheduleRun();
  } catch (exc) {
    fail(exc);
  }
}

/** The model at url; its name from the server's Content-Disposition (`onnxlrp web-demo` sends it), else the URL. */
async function loadUrl(url) {
  document.body.dataset.state = 'loading';
  const started = performance.now();
  let response = null;
  try {
    response = await fetch(url);
  } catch (exc) {
    response = null;
  }
  if (!response || !response.ok) {
    document.body.dataset.state = 'no-model';
    showMessage(`No model at ${url}: start this page with \`onnxlrp web-demo [MODEL]\`, or drop a model ` +
      'compiled with `onnxlrp compile` on it.', 'note');
    $('#status').textContent = `onnxruntime-web ${ort.env.versions.web || ''} · no model loaded`;
    return;
  }
  const buffer = await response.arrayBuffer();
  const fetchMs = performance.now() - started;
  const disposition = /filename="([^"]+)"/.exec(response.headers.get('Content-Disposition') || '');
  const name = disposition ? disposition[1] : decodeURIComponent(url.split('?')[0].split('/').pop());
  await loadModel(buffer, name, fetchMs);
}

// ---------------------------------------------------------------------------------------------------------------
// Drawing and the model input

const pad = $('#pad');
const pen = pad.getContext('2d', { willReadFrequently: true });
let drawing = null;

/** Canvas coordinates of a pointer event. */
function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

pad.addEventListener('pointerdown', (event) => {
  pad.setPointerCapture(event.pointerId);
  drawing = padPoint(event);
  pen.fillStyle = '#fff';
  pen.beginPath();
  pen.arc(drawing[0], drawing[1], PEN_WIDTH / 2, 0, 2 * Math.PI);
  pen.fill();
  scheduleRun();
});
pad.addEventListener('pointermove', (event) => {
  if (!drawing) return;
  const point = padPoint(event);
  Object.assign(pen, { strokeStyle: '#fff', lineWidth: PEN_WIDTH, lineCap: 'round', lineJoin: 'round' });
  pen.beginPath();
  pen.moveTo(drawing[0], drawing[1]);
  pen.lineTo(point[0], point[1]);
  pen.stroke();
  drawing = point;
  scheduleRun();
});
for (const type of ['pointerup', 'pointercancel']) {
  pad.addEventListener(type, () => {
    drawing = null;
    scheduleRun();
  });
}
$('#clear').addEventListener('click', () => {
  pen.clearRect(0, 0, pad.width, pad.height);
  state.target = -1;
  scheduleRun();
});

/**
 * The ink as the model's input: the drawing's bounding box scaled (aspect kept) to fill the input's height or
 * width, centred, each input pixel the mean ink over its area (as the digits data set was made: 4x4 blocks of a
 * 32x32 bitmap), in [0, 1], copied to every channel. Null when nothing is drawn.
 */
function inkToInput(spec) {
  const { data } = pen.getImageData(0, 0, pad.width, pad.height);
  const W = pad.width;
  const H = pad.height;
  const ink = new Float64Array(W * H);
  let [x0, y0, x1, y1] = [W, H, -1, -1];
  for (let y = 0; y < H; y += 1) {
    for (let x = 0; x < W; x += 1) {
      const a = data[4 * (y * W + x) + 3] / 255;
      ink[y * W + x] = a;
      if (a > 0.05) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) return null;
  const { height: h, width: w } = spec;
  const scale = Math.min(w / (x1 - x0 + 1), h / (y1 - y0 + 1)); // input pixels per canvas pixel
  const left = (x0 + x1 + 1) / 2 - w / (2 * scale); // canvas coordinates of the input's top-left corner
  const top = (y0 + y1 + 1) / 2 - h / (2 * scale);
  const weights = (start, count, limit) => Array.from({ length: count }, (_, i) => {
    const a = start + i / scale;
    const b = start + (i + 1) / scale;
    const parts = [];
    for (let p = Math.max(0, Math.floor(a)); p < Math.min(limit, Math.ceil(b)); p += 1) {
      parts.push([p, Math.min(b, p + 1) - Math.max(a, p)]);
    }
    return parts;
  });
  const rows = weights(top, h, H);
  const cols = weights(left, w, W);
  const area = 1 / (scale * scale);
  const image = new Float64Array(h * w);
  for (let i = 0; i < h; i += 1) {
    for (let j = 0; j < w; j += 1) {
      let s = 0;
      for (const [y, wy] of rows[i]) for (const [x, wx] of cols[j]) s += ink[y * W + x] * wy * wx;
      image[i * w + j] = Math.min(1, s / area);
    }
  }
  const ArrayType = spec.type === 'float64' ? Float64Array : Float32Array;
  const out = new ArrayType(h * w * spec.channels);
  for (let c = 0; c < spec.channels; c += 1) {
    for (let k = 0; k < h * w; k += 1) {
      out[spec.layout === 'NHWC' ? k * spec.channels + c : c * h * w + k] = image[k];
    }
  }
  return out;
}

/** Values of an input-shaped tensor as an (H*W) map: summed over channels (relevance) or averaged (pixels). */
function channelMap(values, spec, mean = false) {
  const { height: h, width: w, channels } = spec;
  const map = new Float64Array(h * w);
  for (let c = 0; c < channels; c += 1) {
    for (let k = 0; k < h * w; k += 1) {
      map[k] += Number(values[spec.layout === 'NHWC' ? k * channels + c : c * h * w + k]);
    }
  }
  if (mean) map.forEach((v, k) => { map[k] = v / channels; });
  return map;
}

// ---------------------------------------------------------------------------------------------------------------
// Running

/** Explain the drawing now, or as soon as the run in progress ends (the last drawing is always explained). */
function scheduleRun() {
  if (!state.session) return;
  document.body.dataset.state = 'running';
  if (state.busy) {
    state.pending = true;
    return;
  }
  state.busy = true;
  runOnce().finally(() => {
    state.busy = false;
    if (state.pending) {
      state.pending = false;
      scheduleRun();
    } else if (document.body.dataset.state === 'running') {
      document.body.dataset.state = 'ready';
    }
  });
}

/** The session's feeds for one input image: the image, lrp_target, and lrp_position (-1) if the model has it. */
function feedsFor(input) {
  const { spec, meta, session } = state;
  const feeds = {
    [spec.name]: new ort.Tensor(spec.type, input, spec.dims),
    [meta.target_input || 'lrp_target']: new ort.Tensor('int64', BigInt64Array.of(BigInt(state.target)), [1]),
  };
  const position = session.inputMetadata.find((m) => m.name === (meta.position_input || POSITION_INPUT));
  if (position) {
    const dims = (position.shape || []).length === 0 ? [] : [1];
    feeds[position.name] = new ort.Tensor('int64', BigInt64Array.of(-1n), dims);
  }
  return feeds;
}

/** Median time of `rounds` explanations of the current drawing, in ms (for benchmarks/web_startup.py). */
async function timeRuns(rounds) {
  const input = inkToInput(state.spec);
  const times = [];
  for (let i = 0; i < rounds; i += 1) {
    const started = performance.now();
    await state.session.run(feedsFor(input)); // eslint-disable-line no-await-in-loop
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

async function runOnce() {
  const { spec, meta } = state;
  const input = inkToInput(spec);
  if (!input) {
    state.result = null;
    renderEmpty();
    return;
  }
  const feeds = feedsFor(input);
  try {
    const started = performance.now();
    const outputs = await state.session.run(feeds);
    state.timings.runMs = performance.now() - started;
    const [summary] = summarize(outputs, meta, [state.target]);
    const relevance = outputs[meta.relevance[spec.name]].data;
    state.result = {
      input: Array.from(input), inputDims: spec.dims, target: summary.target, predicted: summary.predicted,
      logits: summary.logits, total: summary.total, inputs: summary.inputs, biases: summary.biases,
      stabilizer: summary.stabilizer, relativeError: summary.relativeError, relevance: Array.from(relevance, Number),
      heatmap: Array.from(channelMap(relevance, spec)), biasTable: biasTable(outputs, meta),
    };
    state.runs += 1;
    document.body.dataset.runs = String(state.runs);
    render(state.result, input);
  } catch (exc) {
    fail(exc);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering

/** matplotlib's 'bwr' colour map at v in [-1, 1]: blue (0, 0, 1) - white - red (1, 0, 0). */
function bwr(v) {
  const t = Math.max(-1, Math.min(1, v));
  return t < 0 ? [255 * (1 + t), 255 * (1 + t), 255] : [255, 255 * (1 - t), 255 * (1 - t)];
}

/** Paint an (h*w) map into a canvas of that size with a colour function. */
function paint(canvas, map, colour) {
  const g = canvas.getContext('2d');
  const image = g.createImageData(canvas.width, canvas.height);
  map.forEach((v, k) => {
    const [r, gg, b] = colour(v);
    image.data.set([Math.round(r), Math.round(gg), Math.round(b), 255], 4 * k);
  });
  g.putImageData(image, 0, 0);
}

function renderEmpty() {
  for (const canvas of [$('#input-view'), $('#heatmap')]) canvas.getContext('2d').clearRect(0, 0, 1e4, 1e4);
  $('#predicted').textContent = '–';
  $('#confidence').textContent = 'draw a digit';
  $('#explaining').textContent = 'explaining the prediction';
  $('#classes').replaceChildren();
  $('#conservation').textContent = '–';
  $('#split').replaceChildren();
  $('#bias-table tbody').replaceChildren();
  $('#vmin').textContent = '−1';
  $('#vmax').textContent = '+1';
  updateStatus();
}

function render(result, input) {
  const { spec } = state;
  const pixels = channelMap(input, spec, true);
  let [low, high] = [Infinity, -Infinity];
  pixels.forEach((v) => { low = Math.min(low, v); high = Math.max(high, v); });
  paint($('#input-view'), pixels, (v) => {
    const g = 255 * (high > low ? (v - low) / (high - low) : 0);
    return [g, g, g];
  });
  const vmax = result.heatmap.reduce((m, v) => Math.max(m, Math.abs(v)), 0) || 1;
  paint($('#heatmap'), result.heatmap, (v) => bwr(v / vmax));
  $('#vmin').textContent = `−${formatG(vmax, 3)}`;
  $('#vmax').textContent = `+${formatG(vmax, 3)}`;
  $('#heatmap-caption').textContent = `relevance for class ${result.target}`;
  renderClasses(result);
  renderBalance(result);
  renderBiasTable(result.biasTable);
  updateStatus();
}

function renderClasses(result) {
  const { logits } = result;
  const top = Math.max(...logits);
  const exps = logits.map((v) => Math.exp(v - top));
  const norm = exps.reduce((a, b) => a + b, 0);
  const probs = exps.map((v) => v / norm);
  $('#predicted').textContent = String(result.predicted);
  $('#confidence').textContent = `${(100 * probs[result.predicted]).toFixed(1)} % probability`;
  $('#confidence').title = 'softmax of the logits';
  $('#explaining').textContent = state.target < 0 ? 'explaining the prediction'
    : `explaining class ${result.target} (chosen)`;
  let shown = logits.map((_, k) => k);
  if (shown.length > MAX_CLASSES_SHOWN) {
    shown = shown.sort((a, b) => logits[b] - logits[a]).slice(0, MAX_CLASSES_SHOWN);
    if (!shown.includes(result.target)) shown[shown.length - 1] = result.target;
  }
  const items = shown.map((k) => {
    const li = document.createElement('li');
    li.dataset.class = String(k);
    li.className = [k === result.predicted ? 'predicted-class' : '', k === result.target ? 'target' : '']
      .join(' ').trim();
    li.title = `logit ${formatG(logits[k], 6)}, probability ${(100 * probs[k]).toFixed(2)} %: click to explain`;
    const label = document.createElement('span');
    label.className = 'label';
    label.textContent = `class ${k}`;
    const track = document.createElement('span');
    track.className = 'track';
    const fill = document.createElement('span');
    fill.className = 'fill';
    fill.style.display = 'block';
    fill.style.width = `${(100 * probs[k]).toFixed(2)}%`;
    track.append(fill);
    const logit = document.createElement('span');
    logit.className = 'logit';
    logit.textContent = formatG(logits[k], 3);
    li.append(label, track, logit);
    li.addEventListener('click', () => {
      state.target = state.target === k || k === result.predicted && state.target < 0 ? -1 : k;
      scheduleRun();
    });
    return li;
  });
  $('#classes').replaceChildren(...items);
}

function renderBalance(result) {
  $('#conservation').textContent = `logit ${formatG(result.total)} (class ${result.target}) = inputs ` +
    `${formatG(result.inputs)} + biases ${formatG(result.biases)} + stabilizer ${formatG(result.stabilizer, 3)}` +
    `   · relative error ${formatE(result.relativeError)}`;
  const parts = [['inputs', result.inputs], ['biases', result.biases]];
  const scale = parts.reduce((s, [, v]) => s + Math.abs(v), 0) || 1;
  const blocks = parts.map(([name, value]) => {
    const div = document.createElement('div');
    div.className = `${name}${value < 0 ? ' negative' : ''}`;
    div.style.width = `${(100 * Math.abs(value)) / scale}%`;
    const share = result.total !== 0 ? ` ${(100 * value / result.total).toFixed(0)} %` : '';
    div.textContent = `${name}${share}`;
    div.title = `${name}: ${formatG(value)}`;
    return div;
  });
  $('#split').replaceChildren(...blocks);
}

function renderBiasTable(rows) {
  const bars = rows.filter((r) => r.kind !== 'total' && r.share !== null).map((r) => Math.abs(r.share));
  const widest = Math.max(1e-12, ...bars);
  const body = rows.map((row) => {
    const tr = document.createElement('tr');
    tr.className = row.kind;
    const cells = [row.name, row.op, row.rule, formatG(row.mean, 4),
      row.share === null ? '-' : `${(100 * row.share).toFixed(1)} %`];
    cells.forEach((text, j) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (j >= 3) td.className = 'num';
      tr.append(td);
    });
    const td = document.createElement('td');
    if (row.kind !== 'total' && row.share !== null) {
      const bar = document.createElement('div');
      bar.className = 'share';
      const zero = document.createElement('div');
      zero.className = 'zero';
      const fill = document.createElement('div');
      fill.className = row.share >= 0 ? 'pos' : 'neg';
      fill.style.width = `${(50 * Math.abs(row.share)) / widest}%`;
      bar.append(zero, fill);
      td.append(bar);
    }
    tr.append(td);
    return tr;
  });
  $('#bias-table tbody').replaceChildren(...body);
}

function updateStatus() {
  const { spec, meta, timings } = state;
  if (!spec) return;
  const threads = state.threads ? `, ${state.threads} thread${state.threads > 1 ? 's' : ''}` : '';
  const parts = [
    `model ${state.modelName} (${(state.modelBytes / 1024).toFixed(0)} kB)`, `composite ${meta.composite}`,
    `input ${spec.name} (${spec.dims.join(', ')})`, `onnxruntime-web ${ort.env.versions.web || ''} on ` +
      `${state.backend}${threads}`, `session start ${timings.sessionMs.toFixed(0)} ms`,
  ];
  if (timings.runMs !== undefined && state.result) parts.push(`explanation ${timings.runMs.toFixed(1)} ms`);
  $('#status').textContent = parts.join(' · ');
}

function showMessage(text, kind) {
  const box = $('#message');
  box.hidden = !text;
  box.textContent = text;
  box.className = `message ${kind}`;
}

function fail(exc) {
  const text = exc instanceof LrpError ? exc.message : `onnxruntime-web: ${String(exc.message || exc).split('\n')[0]}`;
  showMessage(text, 'error');
  document.body.dataset.state = 'error';
  document.body.dataset.error = text;
}

// ---------------------------------------------------------------------------------------------------------------
// Opening other models: drop on the page, or the file button

$('#model-file').addEventListener('change', async (event) => {
  const [file] = event.target.files;
  if (file) await loadModel(await file.arrayBuffer(), file.name);
  event.target.value = '';
});
let dragDepth = 0;
window.addEventListener('dragenter', (event) => { event.preventDefault(); dragDepth += 1; $('#drop').hidden = false; });
window.addEventListener('dragleave', () => { dragDepth -= 1; if (dragDepth <= 0) $('#drop').hidden = true; });
window.addEventListener('dragover', (event) => event.preventDefault());
window.addEventListener('drop', async (event) => {
  event.preventDefault();
  dragDepth = 0;
  $('#drop').hidden = true;
  const [file] = event.dataTransfer.files;
  if (file) await loadModel(await file.arrayBuffer(), file.name);
});

/** For tests and the console: the page's state and the last result (plain data). */
window.onnxlrpDemo = {
  state,
  result: () => state.result && JSON.parse(JSON.stringify(state.result)),
  timings: () => ({ ...state.timings }),
  timeRuns,
  load: loadUrl,
};

// the model named by ?model=URL, else model.onnx beside the page (what `onnxlrp web-demo` serves)
loadUrl(query.get('model') || 'model.onnx');
