#!/usr/bin/env node
// Explain inputs with an onnxlrp-compiled model in onnxruntime-node: the prediction, the conservation line and the
// bias table, with the output names read from the model's `onnxlrp` metadata. Nothing here imports onnxlrp.
//
//   node explain.js MODEL INPUT.npy [--target K ...] [--position P] [--json OUT.json] [--threads T]
//   node explain.js MODEL NAME=FILE.npy [NAME=FILE.npy ...] ...      (models with several inputs)
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import {
  biasTable, compiledMetadata, conservationLine, formatG, LrpError, summarize, toNumbers,
} from '../web/onnxlrp.mjs';
import { readNpy } from './npy.js';

const USAGE = 'usage: node explain.js MODEL INPUT.npy|NAME=FILE.npy ... [--target K ...] [--position P] ' +
  '[--json OUT.json] [--threads T]';
const POSITION_INPUT = 'lrp_position';

/** The command line: {model, files: [[name or null, path]], targets: [int], position, json, threads}. */
function parseCommandLine(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        target: { type: 'string', short: 't', multiple: true },
        position: { type: 'string', short: 'p' },
        json: { type: 'string' },
        threads: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (exc) {
    throw new LrpError(`${exc.message} (${USAGE})`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (positionals.length < 2) throw new LrpError(`expected a model and at least one input (${USAGE})`);
  const integer = (text, what) => {
    if (!/^-?\d+$/.test(text)) throw new LrpError(`${what} must be an integer, got '${text}'`);
    return Number(text);
  };
  const [model, ...inputs] = positionals;
  const files = inputs.map((item) => {
    const eq = item.indexOf('=');
    return eq > 0 && !item.slice(0, eq).includes('/') ? [item.slice(0, eq), item.slice(eq + 1)] : [null, item];
  });
  return {
    model,
    files,
    targets: (values.target || []).map((t) => integer(t, '--target')),
    position: values.position === undefined ? -1 : integer(values.position, '--position'),
    json: values.json,
    threads: values.threads === undefined ? 0 : integer(values.threads, '--threads'),
  };
}

/** The array in `array` ({type, dims, data} from an .npy) converted to the model input's declared type. */
function converted(name, array, type) {
  if (array.type === 'float32' || array.type === 'float64') {
    const bad = array.data.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) {
      throw new LrpError(`input '${name}' contains ${Number.isNaN(array.data[bad]) ? 'NaN' : 'Inf'} (the first at ` +
        `flat index ${bad}): replace it before explaining`);
    }
  }
  if (array.type === type) return array.data;
  const floats = ['float32', 'float64'];
  const ints = ['int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64'];
  const targets = { float32: Float32Array, float64: Float64Array, int32: Int32Array, int64: BigInt64Array };
  const sameKind = (floats.includes(array.type) && floats.includes(type)) ||
    (ints.includes(array.type) && ints.includes(type));
  if (!sameKind || !(type in targets)) {
    throw new LrpError(`input '${name}' has dtype ${array.type}, expected ${type}`);
  }
  if (type === 'int64') {
    if (array.type === 'uint64' && array.data.some((v) => v >= 2n ** 63n)) {
      throw new LrpError(`input '${name}' has values outside the range of the model's int64`);
    }
    return BigInt64Array.from(array.data, (v) => BigInt(v));
  }
  if (type === 'int32') {
    const values = Array.from(array.data, Number);
    if (values.some((v) => v < -(2 ** 31) || v >= 2 ** 31)) {
      throw new LrpError(`input '${name}' has values outside the range of the model's int32`);
    }
    return Int32Array.from(values);
  }
  const values = targets[type].from(array.data, Number);
  if (type === 'float32' && values.some((v) => !Number.isFinite(v))) {
    throw new LrpError(`input '${name}' has values beyond the range of the model's float32`);
  }
  return values;
}

let ort; // onnxruntime-node, loaded once the command line and the model's metadata are known to be good

/** The feeds for the model's own inputs (not lrp_target / lrp_position) from the files on the command line. */
function readFeeds(session, files, reserved) {
  const specs = session.inputMetadata.filter((m) => !reserved.includes(m.name));
  const names = specs.map((m) => m.name);
  const byName = new Map();
  for (const [name, path] of files) {
    if (name === null && files.length === 1 && specs.length === 1) byName.set(names[0], path);
    else if (name === null) {
      throw new LrpError(`the model has ${specs.length} inputs (${names.join(', ')}): pass NAME=FILE.npy for each`);
    } else byName.set(name, path);
  }
  const missing = names.filter((n) => !byName.has(n));
  const unknown = [...byName.keys()].filter((n) => !names.includes(n));
  if (missing.length || unknown.length) {
    throw new LrpError(`inputs do not match the model: missing [${missing.join(', ') || 'none'}], unknown ` +
      `[${unknown.join(', ') || 'none'}] (expected: ${names.join(', ')})`);
  }
  const feeds = {};
  let batch = null;
  for (const spec of specs) {
    const array = readNpy(byName.get(spec.name));
    const shape = spec.shape || [];
    const text = `(${shape.map((d) => (typeof d === 'number' ? d : '?')).join(', ')})`;
    if (array.dims.length !== shape.length) {
      throw new LrpError(`input '${spec.name}' has shape (${array.dims.join(', ')}), expected rank ` +
        `${shape.length} ${text}`);
    }
    shape.forEach((want, axis) => {
      if (typeof want === 'number' && want >= 0 && array.dims[axis] !== want) {
        throw new LrpError(`input '${spec.name}' has shape (${array.dims.join(', ')}), expected ${text} ` +
          `(axis ${axis} must be ${want})`);
      }
    });
    if (array.dims.length === 0 || array.dims[0] === 0) throw new LrpError(`input '${spec.name}' has an empty batch`);
    if (batch !== null && array.dims[0] !== batch) {
      throw new LrpError(`input '${spec.name}' has batch size ${array.dims[0]}, other inputs have ${batch}`);
    }
    batch = array.dims[0];
    feeds[spec.name] = new ort.Tensor(spec.type, converted(spec.name, array, spec.type), array.dims);
  }
  return [feeds, batch];
}

/** lrp_target as int64 (N,): -1 (the argmax) by default, one target for every sample, or one per sample. */
function targetTensor(targets, batch) {
  if (targets.length > 1 && targets.length !== batch) {
    throw new LrpError(`got ${targets.length} targets for a batch of ${batch}`);
  }
  if (targets.some((t) => t < 0)) throw new LrpError(`target ${Math.min(...targets)} is negative`);
  const values = targets.length === 0 ? new Array(batch).fill(-1)
    : targets.length === 1 ? new Array(batch).fill(targets[0]) : targets;
  return new ort.Tensor('int64', BigInt64Array.from(values, (v) => BigInt(v)), [batch]);
}

/** lrp_position as int64, shaped as the model declares it: a scalar or one per sample. */
function positionTensor(spec, position, batch) {
  const rank = (spec.shape || []).length;
  if (rank === 0) return new ort.Tensor('int64', BigInt64Array.from([BigInt(position)]), []);
  return new ort.Tensor('int64', BigInt64Array.from(new Array(batch).fill(BigInt(position))), [batch]);
}

/** Classes of the explained output when its declared shape says so, else null. */
function declaredClasses(session, meta) {
  const spec = session.outputMetadata.find((m) => m.name === meta.logits);
  const dims = spec && spec.shape ? spec.shape.slice(spec.shape.length === 3 ? 2 : 1) : [];
  return dims.length && dims.every((d) => typeof d === 'number' && d > 0) ? dims.reduce((a, b) => a * b, 1) : null;
}

/** A table of rows (arrays of strings) with right-aligned number columns. */
function formatTable(header, rows, rightAligned) {
  const widths = header.map((h, j) => Math.max(h.length, ...rows.map((r) => r[j].length)));
  const line = (cells) => cells.map((c, j) => (rightAligned.includes(j) ? c.padStart(widths[j]) : c.padEnd(widths[j])))
    .join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** Print the prediction, the conservation line per sample and the bias table (means over the batch). */
function report(args, meta, outputs, targets, batch) {
  const samples = summarize(outputs, meta, targets, args.position);
  console.log(`model ${args.model} | composite ${meta.composite} | onnxruntime-node ${ort.env.versions.node} | ` +
    `batch ${batch}`);
  samples.slice(0, 8).forEach((s, i) => {
    console.log(`sample ${i}: predicted ${s.predicted}, explained target ${s.target} ` +
      `(output ${formatG(s.output)})`);
    console.log(`  ${conservationLine(s)}`);
  });
  if (batch > 8) console.log(`... ${batch - 8} more samples (use --json to save all)`);
  const rows = biasTable(outputs, meta).map((r) => [r.name, r.op, r.rule, formatG(r.mean, 4),
    r.share === null ? '-' : `${(100 * r.share).toFixed(1)} %`]);
  console.log(`\nbias table (mean of ${batch}): what the inputs explain and what the biases take`);
  console.log(formatTable(['node', 'op', 'rule', 'relevance', 'share'], rows, [3, 4]));
}

/** Every output as {name: {type, dims, data}} (int64 as Numbers), for --json. */
function dump(outputs) {
  return Object.fromEntries(Object.entries(outputs).map(([name, t]) => [name,
    { type: t.type, dims: t.dims.map(Number), data: toNumbers(t.data) }]));
}

async function main(argv) {
  const args = parseCommandLine(argv);
  let bytes;
  try {
    bytes = readFileSync(args.model);
  } catch (exc) {
    throw new LrpError(`cannot read model ${args.model}: ${exc.code === 'ENOENT' ? 'no such file' : exc.message}`);
  }
  const meta = compiledMetadata(bytes, args.model);
  ({ default: ort } = await import('onnxruntime-node'));
  const options = { executionProviders: ['cpu'], logSeverityLevel: 3 };
  if (args.threads > 0) options.intraOpNumThreads = args.threads;
  let session;
  try {
    session = await ort.InferenceSession.create(args.model, options);
  } catch (exc) {
    throw new LrpError(`onnxruntime-node cannot load ${args.model}: ${String(exc.message).split('\n')[0]}`);
  }
  const targetName = meta.target_input || 'lrp_target';
  const positionSpec = session.inputMetadata.find((m) => m.name === (meta.position_input || POSITION_INPUT));
  const [feeds, batch] = readFeeds(session, args.files, [targetName, positionSpec ? positionSpec.name : null]);
  const classes = declaredClasses(session, meta);
  const bad = args.targets.find((t) => classes !== null && t >= classes);
  if (bad !== undefined) {
    throw new LrpError(`target ${bad} is out of range: output '${meta.output}' has ${classes} classes`);
  }
  feeds[targetName] = targetTensor(args.targets, batch);
  if (positionSpec) feeds[positionSpec.name] = positionTensor(positionSpec, args.position, batch);
  let outputs;
  try {
    outputs = await session.run(feeds);
  } catch (exc) {
    throw new LrpError(`onnxruntime rejected the inputs: ${String(exc.message).split('\n')[0]}`);
  }
  report(args, meta, outputs, toNumbers(feeds[targetName].data), batch);
  if (args.json) {
    writeFileSync(args.json, JSON.stringify(dump(outputs)));
    console.log(`wrote ${args.json}`);
  }
}

main(process.argv.slice(2)).catch((exc) => {
  if (exc instanceof LrpError) {
    console.error(`error: ${exc.message}`);
    process.exit(2);
  }
  console.error(`internal error: ${exc && exc.stack ? exc.stack.split('\n')[0] : exc}`);
  process.exit(3);
});
