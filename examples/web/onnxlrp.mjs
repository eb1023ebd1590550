// Reading an onnxlrp-compiled model in JavaScript (browser and Node.js alike, no dependencies): the `onnxlrp`
// metadata that names its outputs, the feeds it needs, and the numbers of one run (conservation, bias table).

export const METADATA_KEY = 'onnxlrp';

/** Error for anything wrong with the model or the data: its message is one line saying what and where. */
export class LrpError extends Error {
  constructor(message) {
    super(message);
    this.name = 'LrpError';
  }
}

/** A protobuf varint at `pos`: [value, next position] (arithmetic, not bit operations: lengths may pass 2^32). */
function readVarint(bytes, pos) {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i += 1) {
    if (pos >= bytes.length) throw new LrpError('the model file is truncated (a varint runs past its end)');
    const byte = bytes[pos];
    pos += 1;
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, pos];
    scale *= 128;
  }
  throw new LrpError('the model file is not an ONNX model (a varint is longer than 10 bytes)');
}

/** The fields of one protobuf message as [field number, wire type, value or [start, end) of a bytes field]. */
function* fields(bytes, start = 0, end = bytes.length) {
  let pos = start;
  while (pos < end) {
    const [key, afterKey] = readVarint(bytes, pos);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    pos = afterKey;
    if (wire === 0) {
      const [value, next] = readVarint(bytes, pos);
      yield [field, wire, value];
      pos = next;
    } else if (wire === 2) {
      const [length, next] = readVarint(bytes, pos);
      if (next + length > end) throw new LrpError(`the model file is truncated (field ${field} runs past its end)`);
      yield [field, wire, [next, next + length]];
      pos = next + length;
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
    } else {
      throw new LrpError(`the model file is not an ONNX model (protobuf wire type ${wire} at byte ${pos})`);
    }
  }
  if (pos !== end) throw new LrpError('the model file is truncated');
}

/** ModelProto.metadata_props (field 14: key = 1, value = 2) of a serialized ONNX model, as a Map. */
export function readMetadataProps(bytes) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const decoder = new TextDecoder('utf-8');
  const props = new Map();
  for (const [field, wire, range] of fields(data)) {
    if (field !== 14 || wire !== 2) continue;
    let key = '';
    let value = '';
    for (const [f, w, r] of fields(data, range[0], range[1])) {
      if (w !== 2) continue;
      if (f === 1) key = decoder.decode(data.subarray(r[0], r[1]));
      if (f === 2) value = decoder.decode(data.subarray(r[0], r[1]));
    }
    props.set(key, value);
  }
  return props;
}

/** The onnxlrp metadata of a compiled model (output names, composite, rules, graph); an LrpError otherwise. */
export function compiledMetadata(bytes, where = 'the model') {
  const text = readMetadataProps(bytes).get(METADATA_KEY);
  if (text === undefined) {
    throw new LrpError(`${where} is not compiled by onnxlrp (no '${METADATA_KEY}' metadata): ` +
      'compile it first with `onnxlrp compile MODEL -o COMPILED.onnx`');
  }
  try {
    return JSON.parse(text);
  } catch (exc) {
    throw new LrpError(`${where} has unreadable '${METADATA_KEY}' metadata (${exc.message})`);
  }
}

/** Number of elements of a shape. */
export function sizeOf(dims) {
  return dims.reduce((a, b) => a * Number(b), 1);
}

/** A plain array of Numbers from a tensor's data (BigInt64Array included). */
export function toNumbers(data) {
  return Array.from(data, Number);
}

/** Per-sample sums (N,) of a tensor {data, dims} whose first axis is the batch. */
export function perSample(tensor, batch) {
  const per = tensor.data.length / batch;
  const sums = new Array(batch).fill(0);
  for (let n = 0; n < batch; n += 1) {
    let s = 0;
    for (let j = n * per; j < (n + 1) * per; j += 1) s += Number(tensor.data[j]);
    sums[n] = s;
  }
  return sums;
}

/** The explained logits as one row per sample: (N, C), or the row at `position` of a sequence output (N, T, C). */
export function logitRows(tensor, batch, position = -1) {
  const dims = tensor.dims.map(Number);
  const values = toNumbers(tensor.data);
  if (dims.length === 3 && dims[0] === batch) {
    const [, steps, classes] = dims;
    const t = position < 0 ? steps + position : position;
    const row = (n) => values.slice((n * steps + t) * classes, (n * steps + t + 1) * classes);
    return Array.from({ length: batch }, (_, n) => row(n));
  }
  const per = values.length / batch;
  return Array.from({ length: batch }, (_, n) => values.slice(n * per, (n + 1) * per));
}

/** Index of the largest value (the first one on ties, like NumPy's argmax). */
export function argmax(row) {
  let best = 0;
  for (let j = 1; j < row.length; j += 1) if (row[j] > row[best]) best = j;
  return best;
}

/**
 * The numbers of one run of a compiled model, per sample: predicted class, explained target and output value, and
 * the conservation identity total = inputs + biases + stabilizer with its relative error.
 * `outputs` maps output names to {data, dims}; `targets` holds what was fed to lrp_target (-1: the argmax).
 */
export function summarize(outputs, meta, targets, position = -1) {
  const need = (name) => {
    if (!(name in outputs)) throw new LrpError(`the compiled model has no output '${name}' named in its metadata`);
    return outputs[name];
  };
  const total = toNumbers(need(meta.total).data);
  const batch = total.length;
  const rows = logitRows(need(meta.logits), batch, position);
  const stabilizer = toNumbers(need(meta.stabilizer).data);
  const zero = () => new Array(batch).fill(0);
  const inputs = zero();
  for (const name of Object.values(meta.relevance)) perSample(need(name), batch).forEach((v, n) => { inputs[n] += v; });
  const biases = zero();
  for (const name of Object.values(meta.bias)) perSample(need(name), batch).forEach((v, n) => { biases[n] += v; });
  return Array.from({ length: batch }, (_, n) => {
    const predicted = argmax(rows[n]);
    const target = Number(targets[n]) < 0 ? predicted : Number(targets[n]);
    if (target >= rows[n].length) {
      throw new LrpError(`target ${target} is out of range: output '${meta.output}' has ${rows[n].length} classes`);
    }
    const sum = inputs[n] + biases[n] + stabilizer[n];
    return {
      predicted, target, logits: rows[n], output: rows[n][target], total: total[n], inputs: inputs[n],
      biases: biases[n], stabilizer: stabilizer[n],
      relativeError: Math.abs(sum - total[n]) / Math.max(Math.abs(total[n]), 1e-30),
    };
  });
}

/** A number as Python's '%.{digits}g' writes it: fixed notation, exponent form below 1e-4 and from 10^digits up. */
export function formatG(value, digits = 6) {
  if (value === null || value === undefined) return '-';
  if (value === 0 || !Number.isFinite(value)) return String(value);
  const exponent = Math.floor(Math.log10(Math.abs(Number(value.toPrecision(digits)))));
  if (exponent < -4 || exponent >= digits) {
    const [mantissa, power] = value.toExponential(digits - 1).split('e');
    const trimmed = mantissa.includes('.') ? mantissa.replace(/\.?0+$/, '') : mantissa;
    const sign = power[0] === '-' ? '-' : '+';
    return `${trimmed}e${sign}${power.replace(/^[+-]/, '').padStart(2, '0')}`;
  }
  return String(Number(value.toPrecision(digits)));
}

/** A number as Python's '%.{digits}e' writes it (two-digit exponent: 1.0e-07). */
export function formatE(value, digits = 1) {
  const [mantissa, power] = value.toExponential(digits).split('e');
  return `${mantissa}e${power[0] === '-' ? '-' : '+'}${power.replace(/^[+-]/, '').padStart(2, '0')}`;
}

/** 'total T = inputs I + biases B + stabilizer S  (relative error E)' for one sample of summarize(). */
export function conservationLine(s) {
  const g = formatG;
  return `total ${g(s.total)} = inputs ${g(s.inputs)} + biases ${g(s.biases)} + stabilizer ${g(s.stabilizer, 3)}` +
    `  (relative error ${formatE(s.relativeError)})`;
}

/**
 * The bias table: every node whose bias takes relevance (graph order), each input, the stabilizer, then the totals
 * row (the sum of the rows above: the explained output). Each row: {kind, name, op, rule, values (N,), mean, share},
 * share = the row's sum over the batch / the total's sum over the batch (null when the total is 0).
 */
export function biasTable(outputs, meta) {
  const total = toNumbers(outputs[meta.total].data);
  const batch = total.length;
  const totalSum = total.reduce((a, b) => a + b, 0);
  const ops = Object.fromEntries((meta.graph || []).map((entry) => [entry[0], entry[1]]));
  const row = (kind, name, op, rule, values) => {
    const sum = values.reduce((a, b) => a + b, 0);
    return { kind, name, op, rule, values, mean: sum / batch, share: totalSum !== 0 ? sum / totalSum : null };
  };
  const order = [...(meta.graph || []).map((entry) => entry[0]), ...Object.keys(meta.rules || {}),
    ...Object.keys(meta.bias)];
  const rows = [];
  for (const name of new Set(order)) {
    if (!(name in meta.bias)) continue;
    rows.push(row('bias', name, ops[name] || '?', (meta.rules || {})[name] || '?',
      perSample(outputs[meta.bias[name]], batch)));
  }
  for (const [name, output] of Object.entries(meta.relevance)) {
    rows.push(row('input', name, 'input', '-', perSample(outputs[output], batch)));
  }
  rows.push(row('stabilizer', 'stabilizer', '-', '-', toNumbers(outputs[meta.stabilizer].data)));
  const summed = new Array(batch).fill(0);
  for (const r of rows) r.values.forEach((v, n) => { summed[n] += v; });
  rows.push(row('total', 'total', '-', '-', summed));
  return rows;
}
