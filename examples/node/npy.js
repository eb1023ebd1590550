// Reading NumPy .npy files (format versions 1 to 3, little-endian, C order) into typed arrays for onnxruntime.
import { readFileSync } from 'node:fs';

import { LrpError } from '../web/onnxlrp.mjs';

/** NumPy dtype string -> [onnxruntime tensor type, typed array class]. */
const DTYPES = {
  '<f4': ['float32', Float32Array],
  '<f8': ['float64', Float64Array],
  '<f2': ['float16', Uint16Array],
  '<i8': ['int64', BigInt64Array],
  '<i4': ['int32', Int32Array],
  '<i2': ['int16', Int16Array],
  '|i1': ['int8', Int8Array],
  '<u8': ['uint64', BigUint64Array],
  '<u4': ['uint32', Uint32Array],
  '<u2': ['uint16', Uint16Array],
  '|u1': ['uint8', Uint8Array],
  '|b1': ['bool', Uint8Array],
};

/** One .npy file as {type, dims, data}: data is a typed array of the file's dtype. */
export function readNpy(path) {
  let bytes;
  try {
    bytes = readFileSync(path);
  } catch (exc) {
    throw new LrpError(`cannot read input file ${path}: ${exc.code === 'ENOENT' ? 'no such file' : exc.message}`);
  }
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
  if (bytes.length < 10 || magic.some((b, i) => bytes[i] !== b)) {
    throw new LrpError(`${path} is not a .npy file (save the array with numpy.save)`);
  }
  const major = bytes[6];
  const headerLength = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLength;
  if (start > bytes.length) throw new LrpError(`${path} is truncated (its header runs past the end)`);
  const header = bytes.subarray(major === 1 ? 10 : 12, start).toString(major === 3 ? 'utf8' : 'latin1');
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const order = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !order || !shape) throw new LrpError(`${path} has an unreadable .npy header: ${header.trim()}`);
  const spec = DTYPES[descr[1].replace(/^=/, '<')];
  if (!spec) {
    throw new LrpError(`${path} holds dtype '${descr[1]}', which this reader does not take ` +
      `(little-endian ${Object.keys(DTYPES).join(', ')})`);
  }
  if (order[1] === 'True') throw new LrpError(`${path} is in Fortran order: save numpy.ascontiguousarray(x)`);
  const dims = shape[1].split(',').map((s) => s.trim()).filter((s) => s.length).map(Number);
  const count = dims.reduce((a, b) => a * b, 1);
  const [type, ArrayType] = spec;
  const byteLength = count * ArrayType.BYTES_PER_ELEMENT;
  if (start + byteLength > bytes.length) {
    throw new LrpError(`${path} is truncated: shape (${dims.join(', ')}) needs ${byteLength} bytes of data, ` +
      `the file has ${bytes.length - start}`);
  }
  const copy = new Uint8Array(byteLength); // aligned copy: typed arrays need offsets that are multiples of the size
  copy.set(bytes.subarray(start, start + byteLength));
  return { type, dims, data: new ArrayType(copy.buffer) };
}
