// Node-API glue for moe-run's native kernels and page-cache control. Inputs are typed arrays;
// nothing here keeps a reference to JS memory after a call returns.
#include <node_api.h>

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "expert_kernels.h"
#include "page_residency.h"
#include "direct_read.h"
#include "napi_util.h"

namespace moe {
void register_dense(napi_env env, napi_value exports);   // dense_native.cc
void register_decode(napi_env env, napi_value exports);  // decode_step.cc
}

namespace moe::napi {

// The encoding code 0..12 (Q8/Q4/MX4/Q41/Q50/Q51 only where H and F are multiples of 32,
// Q2K..Q6K of 256: every row whole blocks); else throws a RangeError.
static bool kernel_enc(napi_env env, double code, size_t H, size_t F, const char* fn, moe::Enc* enc) {
  if (!(code >= 0 && code < moe::kEncCount && code == double(int(code)))) {
    napi_throw_range_error(env, nullptr,
                           (std::string(fn) + ": encoding must be 0 (f32), 1 (f16), 2 (int8), 3 (int4), 4 (mxfp4), 5 (q4_k), 6 (q6_k), 7 (q5_k), 8 (q4_1), 9 (q5_0), 10 (q5_1), 11 (q2_k) or 12 (q3_k)").c_str());
    return false;
  }
  *enc = static_cast<moe::Enc>(int(code));
  const size_t m = moe::enc_row_multiple(*enc);
  if (H % m || F % m) {
    napi_throw_range_error(env, nullptr, (std::string(fn) + (moe::enc_kquant(*enc) ? ": q2_k/q3_k/q4_k/q5_k/q6_k need sizes that are multiples of 256" : ": int8/int4/mxfp4/q4_1/q5_0/q5_1 need sizes that are multiples of 32")).c_str());
    return false;
  }
  return true;
}

// A record's encodings: a code 0..12 for all three matrices (kernel_enc), or, where they differ,
// kMixedRecord | gate | up << 8 | down << 16 (store/recordEncodings.ts nativeRecordCode), each
// matrix's rows whole blocks of its own encoding (gate and up rows are H long, down rows F).
constexpr double kMixedRecord = double(1 << 24);
bool record_encs(napi_env env, double code, size_t H, size_t F, const char* fn, moe::RecordEncs* encs) {
  if (code < kMixedRecord) {
    moe::Enc e;
    if (!kernel_enc(env, code, H, F, fn, &e)) return false;
    *encs = moe::RecordEncs(e);
    return true;
  }
  const int64_t bits = int64_t(code - kMixedRecord);
  const int parts[3] = {int(bits & 255), int((bits >> 8) & 255), int((bits >> 16) & 255)};
  const size_t cols[3] = {H, H, F};
  if (code != double(int64_t(code)) || bits >= (int64_t(1) << 24)) {
    napi_throw_range_error(env, nullptr, (std::string(fn) + ": a mixed record's code is 2^24 + gate + up * 256 + down * 65536").c_str());
    return false;
  }
  for (int i = 0; i < 3; i++) {
    if (parts[i] >= moe::kEncCount) {
      napi_throw_range_error(env, nullptr, (std::string(fn) + ": a mixed record's encodings must each be 0..12").c_str());
      return false;
    }
    if (cols[i] % moe::enc_row_multiple(static_cast<moe::Enc>(parts[i]))) {
      napi_throw_range_error(env, nullptr, (std::string(fn) + ": a matrix's rows must be whole blocks of its encoding").c_str());
      return false;
    }
  }
  *encs = moe::RecordEncs(static_cast<moe::Enc>(parts[0]), static_cast<moe::Enc>(parts[1]), static_cast<moe::Enc>(parts[2]));
  return true;
}

// The optional spec argument of expertForward / expertsForward: Float64Array [activation (0 silu,
// 1 clampedSwiglu), alpha, limit, bias (0/1)]; undefined or null: the defaults. False: thrown.
bool expert_options(napi_env env, napi_value v, const char* fn, moe::ExpertOptions* opts) {
  napi_valuetype type;
  napi_typeof(env, v, &type);
  if (type == napi_undefined || type == napi_null) return true;
  bool is_typed = false;
  napi_is_typedarray(env, v, &is_typed);
  void* spec = nullptr;
  napi_typedarray_type ta = napi_uint8_array;
  size_t len = 0, off = 0;
  napi_value ab;
  if (!is_typed || napi_get_typedarray_info(env, v, &ta, &len, &spec, &ab, &off) != napi_ok || ta != napi_float64_array || len != 4) {
    return napi_throw_type_error(env, nullptr, (std::string(fn) + ": spec must be a Float64Array [activation, alpha, limit, bias]").c_str()), false;
  }
  const double* sp = static_cast<const double*>(spec);
  if (!(sp[0] == 0 || sp[0] == 1) || !(sp[3] == 0 || sp[3] == 1)) {
    return napi_throw_range_error(env, nullptr, (std::string(fn) + ": activation must be 0 (silu) or 1 (clampedSwiglu), bias 0 or 1").c_str()), false;
  }
  opts->act = static_cast<moe::Activation>(int(sp[0]));
  opts->alpha = float(sp[1]);
  opts->limit = float(sp[2]);
  opts->bias = sp[3] == 1;
  return true;
}

}  // namespace moe::napi

namespace {

using moe::napi::array_length;
using moe::napi::expert_options;
using moe::napi::kernel_isa_ok;
using moe::napi::num;
using moe::napi::record_encs;
using moe::napi::typed_data;

#define CHECK(call)                                                     \
  do {                                                                  \
    if ((call) != napi_ok) {                                            \
      napi_throw_error(env, nullptr, "moe_native: bad arguments (" #call ")"); \
      return nullptr;                                                   \
    }                                                                   \
  } while (0)


void set_number(napi_env env, napi_value obj, const char* name, double value) {
  napi_value v;
  napi_create_double(env, value, &v);
  napi_set_named_property(env, obj, name, v);
}

std::string str(napi_env env, napi_value v) {
  size_t len = 0;
  napi_get_value_string_utf8(env, v, nullptr, 0, &len);
  std::string s(len, '\0');
  napi_get_value_string_utf8(env, v, s.data(), len + 1, &len);
  return s;
}

// ---- kernels: instruction-set level, expertForward ----
// False after throwing an Error with code KERNEL_ISA_UNSUPPORTED when MOE_RUN_KERNEL_ISA asks for a
// level this CPU cannot run (the kernels would otherwise quietly run at the best level it has).

// kernelIsa() -> "scalar" | "avx2" | "vnni": the level the kernels run at.
napi_value KernelIsa(napi_env env, napi_callback_info) {
  if (!kernel_isa_ok(env)) return nullptr;
  napi_value v;
  napi_create_string_utf8(env, moe::kernel_isa(), NAPI_AUTO_LENGTH, &v);
  return v;
}

// kernelIsas() -> string[]: the levels this CPU can run (MOE_RUN_KERNEL_ISA may force any of them).
napi_value KernelIsas(napi_env env, napi_callback_info) {
  const auto names = moe::kernel_isas();
  napi_value arr;
  napi_create_array_with_length(env, names.size(), &arr);
  for (size_t i = 0; i < names.size(); i++) {
    napi_value v;
    napi_create_string_utf8(env, names[i].c_str(), NAPI_AUTO_LENGTH, &v);
    napi_set_element(env, arr, uint32_t(i), v);
  }
  return arr;
}

// One expert's record, tokens x [T, H] and output [T, H] from JS values, checked against H, F,
// the encodings and the biases; false (thrown) when they do not fit.
bool expert_call(napi_env env, napi_value rec_v, napi_value x_v, size_t T, napi_value out_v, size_t H, size_t F, const moe::RecordEncs& enc,
                 bool bias, const char* fn, moe::ExpertCall* call) {
  void *rec, *x, *out;
  size_t rec_bytes, x_bytes, out_bytes;
  if (!typed_data(env, rec_v, &rec, &rec_bytes) || !typed_data(env, x_v, &x, &x_bytes) || !typed_data(env, out_v, &out, &out_bytes)) {
    return napi_throw_type_error(env, nullptr, (std::string(fn) + ": record, x and out must be typed arrays").c_str()), false;
  }
  if (rec_bytes != moe::expert_record_bytes(enc, H, F, bias) || x_bytes < T * H * 4 || out_bytes < T * H * 4) {
    return napi_throw_range_error(env, nullptr, (std::string(fn) + ": buffer sizes do not match H, F, T, the encoding and the biases").c_str()), false;
  }
  *call = {static_cast<const uint8_t*>(rec), static_cast<const float*>(x), T, static_cast<float*>(out)};
  return true;
}

// The arguments expertForward and expertsForward share: (enc, record(s), H, F, x(s), T(s), out(s),
// threads, spec?), with the kernel level, the encodings and the spec checked.
struct ExpertArgs {
  napi_value a[9];
  size_t H = 0, F = 0;
  moe::RecordEncs enc{moe::Enc::F32};
  moe::ExpertOptions opts;
};
bool expert_args(napi_env env, napi_callback_info info, const char* fn, ExpertArgs* e) {
  size_t argc = 9;
  if (napi_get_cb_info(env, info, &argc, e->a, nullptr, nullptr) != napi_ok) {
    return napi_throw_error(env, nullptr, "moe_native: bad arguments (napi_get_cb_info)"), false;
  }
  if (argc < 8) return napi_throw_error(env, nullptr, (std::string(fn) + ": 8 arguments expected").c_str()), false;
  if (!kernel_isa_ok(env)) return false;
  e->H = size_t(num(env, e->a[2]));
  e->F = size_t(num(env, e->a[3]));
  if (!record_encs(env, num(env, e->a[0]), e->H, e->F, fn, &e->enc)) return false;
  return argc < 9 || expert_options(env, e->a[8], fn, &e->opts);
}

// expertForward(enc (a code or a mixed record's, record_encs), record: Uint8Array, H, F, x: Float32Array [T,H], T, out: Float32Array [T,H], threads,
//               spec?: Float64Array [activation (0 silu, 1 clampedSwiglu), alpha, limit, bias (0/1)])
napi_value ExpertForward(napi_env env, napi_callback_info info) {
  ExpertArgs e;
  if (!expert_args(env, info, "expertForward", &e)) return nullptr;
  const size_t T = size_t(num(env, e.a[5]));
  moe::ExpertCall c{};
  if (!expert_call(env, e.a[1], e.a[4], T, e.a[6], e.H, e.F, e.enc, e.opts.bias, "expertForward", &c)) return nullptr;
  moe::expert_forward(e.enc, c.record, e.H, e.F, c.x, T, c.out, int(num(env, e.a[7])), e.opts);
  return nullptr;
}

// expertsForward(enc, records: Uint8Array[], H, F, xs: Float32Array[] ([T_k, H] each), Ts: number[], outs: Float32Array[], threads, spec?):
// expertForward for several experts of one layer at once (experts_forward), each out the same bits.
napi_value ExpertsForward(napi_env env, napi_callback_info info) {
  ExpertArgs e;
  if (!expert_args(env, info, "expertsForward", &e)) return nullptr;
  const napi_value* a = e.a;
  const int64_t n = array_length(env, a[1]);
  if (n < 0 || array_length(env, a[4]) != n || array_length(env, a[5]) != n || array_length(env, a[6]) != n) {
    return napi_throw_type_error(env, nullptr, "expertsForward: records, xs, Ts and outs must be arrays of one length"), nullptr;
  }
  std::vector<moe::ExpertCall> calls(static_cast<size_t>(n));
  for (uint32_t k = 0; k < uint32_t(n); k++) {
    napi_value rv, xv, tv, ov;
    napi_get_element(env, a[1], k, &rv);
    napi_get_element(env, a[4], k, &xv);
    napi_get_element(env, a[5], k, &tv);
    napi_get_element(env, a[6], k, &ov);
    if (!expert_call(env, rv, xv, size_t(num(env, tv)), ov, e.H, e.F, e.enc, e.opts.bias, "expertsForward", &calls[k])) return nullptr;
  }
  moe::experts_forward(e.enc, calls.data(), calls.size(), e.H, e.F, int(num(env, a[7])), e.opts);
  return nullptr;
}

// encodeMatrix(enc, src: Float32Array [rows*cols], rows, cols, dst: Uint8Array)
napi_value EncodeMatrix(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value a[5];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  const int code = int(num(env, a[0]));
  if (code < 0 || code > 4) return napi_throw_range_error(env, nullptr, "encodeMatrix: encoding must be 0..4 (the GGUF block encodings, q4_k etc., are encoded in TypeScript)"), nullptr;
  const auto enc = static_cast<moe::Enc>(code);
  const size_t rows = size_t(num(env, a[2])), cols = size_t(num(env, a[3]));
  void *src, *dst;
  size_t src_bytes, dst_bytes;
  if (!typed_data(env, a[1], &src, &src_bytes) || !typed_data(env, a[4], &dst, &dst_bytes)) {
    return napi_throw_type_error(env, nullptr, "encodeMatrix: src and dst must be typed arrays"), nullptr;
  }
  if (src_bytes != rows * cols * 4 || dst_bytes != moe::matrix_bytes(enc, rows, cols) || (moe::enc_quantized(enc) && cols % moe::kBlock)) {
    return napi_throw_range_error(env, nullptr, "encodeMatrix: sizes do not match rows, cols and the encoding"), nullptr;
  }
  moe::encode_matrix(enc, static_cast<const float*>(src), rows, cols, static_cast<uint8_t*>(dst));
  return nullptr;
}

napi_value FileResidency(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  moe::Residency r{};
  std::string err;
  if (!moe::file_residency(str(env, a[0]), &r, &err)) return napi_throw_error(env, nullptr, err.c_str()), nullptr;
  napi_value obj;
  napi_create_object(env, &obj);
  set_number(env, obj, "fileBytes", double(r.file_bytes));
  set_number(env, obj, "residentBytes", double(r.resident_bytes));
  set_number(env, obj, "pageSize", double(r.page_size));
  return obj;
}

napi_value WillNeed(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value a[3];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  std::string err;
  if (!moe::will_need(str(env, a[0]), uint64_t(num(env, a[1])), uint64_t(num(env, a[2])), &err)) {
    return napi_throw_error(env, nullptr, err.c_str()), nullptr;
  }
  return nullptr;
}

// lowerThreadPriority(nice): raises the calling thread's nice value (Linux: per thread), so a
// compute thread yields the cores to the app's own thread first. Threads it creates inherit it.
napi_value LowerThreadPriority(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  const int tid = int(syscall(SYS_gettid));
  if (setpriority(PRIO_PROCESS, id_t(tid), int(num(env, a[0]))) != 0) {
    return napi_throw_error(env, nullptr, (std::string("setpriority: ") + std::strerror(errno)).c_str()), nullptr;
  }
  return nullptr;
}

// openForReads(path) -> { fd, direct, size }: the expert store's data file for direct reads.
napi_value OpenForReads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  moe::OpenedFile f;
  std::string err;
  if (!moe::open_for_reads(str(env, a[0]), &f, &err)) return napi_throw_error(env, nullptr, err.c_str()), nullptr;
  napi_value obj, direct;
  napi_create_object(env, &obj);
  set_number(env, obj, "fd", f.fd);
  napi_get_boolean(env, f.direct, &direct);
  napi_set_named_property(env, obj, "direct", direct);
  set_number(env, obj, "size", double(f.size));
  return obj;
}

napi_value CloseFd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  ::close(int(num(env, a[0])));
  return nullptr;
}

struct RangeArgs {
  moe::OpenedFile file;
  uint64_t offset = 0, length = 0;
  int parallel = 1;
};

RangeArgs range_args(napi_env env, napi_value* a) {
  RangeArgs r;
  r.file.fd = int(num(env, a[0]));
  bool direct = false;
  napi_get_value_bool(env, a[1], &direct);
  r.file.direct = direct;
  r.file.size = uint64_t(num(env, a[2]));
  r.offset = uint64_t(num(env, a[3]));
  r.length = uint64_t(num(env, a[4]));
  r.parallel = int(num(env, a[5]));
  return r;
}

// Buffers handed to JS: releaseRange() frees one at once; the GC's finalizer frees it otherwise.
// A block outlives its memory until the finalizer runs, so neither frees twice (and a reused
// address can never be mistaken for a released one).
struct Block {
  uint8_t* base;
  uint64_t capacity;
  bool freed;
};
std::mutex blocks_mutex;
std::unordered_map<const void*, Block*> live_blocks;  // by base address, while not freed

void finalize_range(napi_env env, void* data, void* hint) {
  Block* b = static_cast<Block*>(hint);
  {
    std::lock_guard<std::mutex> lock(blocks_mutex);
    if (!b->freed) live_blocks.erase(b->base);
  }
  if (!b->freed) {
    int64_t adjusted;
    napi_adjust_external_memory(env, -int64_t(b->capacity), &adjusted);
    moe::free_block(b->base, b->capacity);
  }
  delete b;
}

// Wraps a read range as a Uint8Array over its own aligned memory.
napi_value range_to_js(napi_env env, moe::ReadRange& r, uint64_t length) {
  napi_value ab, view;
  Block* b = new Block{r.base, r.capacity, false};
  if (napi_create_external_arraybuffer(env, r.base, r.capacity, finalize_range, b, &ab) != napi_ok) {
    delete b;
    moe::free_range(&r);
    napi_throw_error(env, nullptr, "moe_native: cannot wrap a read buffer");
    return nullptr;
  }
  {
    std::lock_guard<std::mutex> lock(blocks_mutex);
    live_blocks[r.base] = b;
  }
  int64_t adjusted;
  napi_adjust_external_memory(env, int64_t(r.capacity), &adjusted);
  napi_create_typedarray(env, napi_uint8_array, length, ab, r.lead, &view);
  return view;
}

// readRange(fd, direct, fileSize, offset, length, parallel) -> Uint8Array (synchronous)
napi_value ReadRange(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value a[6];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  if (argc < 6) return napi_throw_error(env, nullptr, "readRange: 6 arguments expected"), nullptr;
  RangeArgs args = range_args(env, a);
  moe::ReadRange r;
  std::string err;
  if (!moe::read_range(args.file, args.offset, args.length, args.parallel, &r, &err)) return napi_throw_error(env, "STORE_READ", err.c_str()), nullptr;
  return range_to_js(env, r, args.length);
}

struct AsyncRead {
  RangeArgs args;
  moe::ReadRange range;
  std::string err;
  bool ok = false;
  napi_deferred deferred;
  napi_async_work work;
};

// readRangeAsync(fd, direct, fileSize, offset, length, parallel) -> Promise<Uint8Array>, read on
// libuv's thread pool (several such reads are in flight at once).
napi_value ReadRangeAsync(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value a[6];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  if (argc < 6) return napi_throw_error(env, nullptr, "readRangeAsync: 6 arguments expected"), nullptr;
  auto* job = new AsyncRead();
  job->args = range_args(env, a);
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "moe-run:readRange", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(
      env, nullptr, name,
      [](napi_env, void* data) {
        auto* j = static_cast<AsyncRead*>(data);
        j->ok = moe::read_range(j->args.file, j->args.offset, j->args.length, j->args.parallel, &j->range, &j->err);
      },
      [](napi_env env, napi_status, void* data) {
        auto* j = static_cast<AsyncRead*>(data);
        if (j->ok) {
          napi_value view = range_to_js(env, j->range, j->args.length);
          if (view) napi_resolve_deferred(env, j->deferred, view);
          else {
            napi_value exc;
            napi_get_and_clear_last_exception(env, &exc);
            napi_reject_deferred(env, j->deferred, exc);
          }
        } else {
          napi_value msg, code, e;
          napi_create_string_utf8(env, j->err.c_str(), NAPI_AUTO_LENGTH, &msg);
          napi_create_string_utf8(env, "STORE_READ", NAPI_AUTO_LENGTH, &code);
          napi_create_error(env, code, msg, &e);
          napi_reject_deferred(env, j->deferred, e);
        }
        napi_delete_async_work(env, j->work);
        delete j;
      },
      job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

// releaseRange(view): frees the memory of a buffer made by readRange/allocRange now, instead of
// whenever the GC collects it (evicted experts must give their bytes back at once, or a process
// under a memory limit overshoots it). Detaches the ArrayBuffer: later use sees length 0.
napi_value ReleaseRange(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  napi_typedarray_type type;
  size_t length, offset;
  void* data;
  napi_value ab;
  if (napi_get_typedarray_info(env, a[0], &type, &length, &data, &ab, &offset) != napi_ok) {
    return napi_throw_type_error(env, nullptr, "releaseRange: a Uint8Array from readRange expected"), nullptr;
  }
  void* base = nullptr;
  size_t ab_len = 0;
  napi_get_arraybuffer_info(env, ab, &base, &ab_len);
  Block* b = nullptr;
  {
    std::lock_guard<std::mutex> lock(blocks_mutex);
    auto it = live_blocks.find(base);
    if (it != live_blocks.end()) {
      b = it->second;
      live_blocks.erase(it);
    }
  }
  if (!b) return nullptr;  // not ours, or already released: the GC owns it
  if (napi_detach_arraybuffer(env, ab) != napi_ok) {
    std::lock_guard<std::mutex> lock(blocks_mutex);
    live_blocks[base] = b;
    return napi_throw_error(env, nullptr, "releaseRange: the buffer cannot be detached"), nullptr;
  }
  b->freed = true;
  int64_t adjusted;
  napi_adjust_external_memory(env, -int64_t(b->capacity), &adjusted);
  moe::free_block(b->base, b->capacity);
  return nullptr;
}

// allocRange(length) -> Uint8Array over fresh aligned memory released like readRange's.
napi_value AllocRange(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  const uint64_t length = uint64_t(num(env, a[0]));
  moe::ReadRange r;
  const uint64_t cap = std::max<uint64_t>(moe::kDirectAlign, (length + moe::kDirectAlign - 1) / moe::kDirectAlign * moe::kDirectAlign);
  r.base = moe::alloc_block(cap);
  if (!r.base) return napi_throw_error(env, nullptr, "allocRange: out of memory"), nullptr;
  r.capacity = cap;
  return range_to_js(env, r, length);
}

napi_value Init(napi_env env, napi_value exports) {
  moe::napi::define_functions(env, exports, {
      {"expertForward", ExpertForward},
      {"expertsForward", ExpertsForward},
      {"kernelIsa", KernelIsa},
      {"kernelIsas", KernelIsas},
      {"encodeMatrix", EncodeMatrix},
      {"fileResidency", FileResidency},
      {"willNeed", WillNeed},
      {"lowerThreadPriority", LowerThreadPriority},
      {"openForReads", OpenForReads},
      {"closeFd", CloseFd},
      {"readRange", ReadRange},
      {"readRangeAsync", ReadRangeAsync},
      {"releaseRange", ReleaseRange},
      {"allocRange", AllocRange},
  });
  moe::register_dense(env, exports);
  moe::register_decode(env, exports);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
