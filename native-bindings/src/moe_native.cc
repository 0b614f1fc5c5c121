// Node-API glue for moe-run's native kernels and page-cache control. Inputs are typed arrays;
// nothing here keeps a reference to JS memory after a call returns.
#include <node_api.h>

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "expert_kernels.h"
#include "page_residency.h"

namespace {

#define CHECK(call)                                                     \
  do {                                                                  \
    if ((call) != napi_ok) {                                            \
      napi_throw_error(env, nullptr, "moe_native: bad arguments (" #call ")"); \
      return nullptr;                                                   \
    }                                                                   \
  } while (0)

bool typed_data(napi_env env, napi_value v, void** data, size_t* bytes) {
  bool is_typed = false;
  napi_is_typedarray(env, v, &is_typed);
  if (!is_typed) return false;
  napi_typedarray_type type;
  size_t length, offset;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &type, &length, data, &ab, &offset) != napi_ok) return false;
  size_t elem = 1;
  switch (type) {
    case napi_float32_array: case napi_int32_array: case napi_uint32_array: elem = 4; break;
    case napi_int16_array: case napi_uint16_array: elem = 2; break;
    case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
    default: elem = 1;
  }
  *bytes = length * elem;
  return true;
}

double num(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

std::string str(napi_env env, napi_value v) {
  size_t len = 0;
  napi_get_value_string_utf8(env, v, nullptr, 0, &len);
  std::string s(len, '\0');
  napi_get_value_string_utf8(env, v, s.data(), len + 1, &len);
  return s;
}

// expertForward(enc, record: Uint8Array, H, F, x: Float32Array [T,H], T, out: Float32Array [T,H], threads)
napi_value ExpertForward(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value a[8];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  if (argc < 8) return napi_throw_error(env, nullptr, "expertForward: 8 arguments expected"), nullptr;
  const auto enc = static_cast<moe::Enc>(int(num(env, a[0])));
  const size_t H = size_t(num(env, a[2])), F = size_t(num(env, a[3])), T = size_t(num(env, a[5]));
  void *rec, *x, *out;
  size_t rec_bytes, x_bytes, out_bytes;
  if (!typed_data(env, a[1], &rec, &rec_bytes) || !typed_data(env, a[4], &x, &x_bytes) || !typed_data(env, a[6], &out, &out_bytes)) {
    return napi_throw_type_error(env, nullptr, "expertForward: record, x and out must be typed arrays"), nullptr;
  }
  if (rec_bytes != 2 * moe::matrix_bytes(enc, F, H) + moe::matrix_bytes(enc, H, F) || x_bytes < T * H * 4 || out_bytes < T * H * 4) {
    return napi_throw_range_error(env, nullptr, "expertForward: buffer sizes do not match H, F, T and the encoding"), nullptr;
  }
  moe::expert_forward(enc, static_cast<const uint8_t*>(rec), H, F, static_cast<const float*>(x), T, static_cast<float*>(out), int(num(env, a[7])));
  return nullptr;
}

// encodeMatrix(enc, src: Float32Array [rows*cols], rows, cols, dst: Uint8Array)
napi_value EncodeMatrix(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value a[5];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  const auto enc = static_cast<moe::Enc>(int(num(env, a[0])));
  const size_t rows = size_t(num(env, a[2])), cols = size_t(num(env, a[3]));
  void *src, *dst;
  size_t src_bytes, dst_bytes;
  if (!typed_data(env, a[1], &src, &src_bytes) || !typed_data(env, a[4], &dst, &dst_bytes)) {
    return napi_throw_type_error(env, nullptr, "encodeMatrix: src and dst must be typed arrays"), nullptr;
  }
  if (src_bytes != rows * cols * 4 || dst_bytes != moe::matrix_bytes(enc, rows, cols) || (enc >= moe::Enc::Q8 && cols % moe::kBlock)) {
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
  napi_value obj, v;
  napi_create_object(env, &obj);
  napi_create_double(env, double(r.file_bytes), &v);
  napi_set_named_property(env, obj, "fileBytes", v);
  napi_create_double(env, double(r.resident_bytes), &v);
  napi_set_named_property(env, obj, "residentBytes", v);
  napi_create_double(env, double(r.page_size), &v);
  napi_set_named_property(env, obj, "pageSize", v);
  return obj;
}

// dropFileCache(path, mapAddr: number (0 = none), mapLen: number)
napi_value DropFileCache(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value a[3];
  CHECK(napi_get_cb_info(env, info, &argc, a, nullptr, nullptr));
  std::string err;
  if (!moe::drop_file_cache(str(env, a[0]), uint64_t(num(env, a[1])), uint64_t(num(env, a[2])), &err)) {
    return napi_throw_error(env, nullptr, err.c_str()), nullptr;
  }
  return nullptr;
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

napi_value Init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"expertForward", nullptr, ExpertForward, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"encodeMatrix", nullptr, EncodeMatrix, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"fileResidency", nullptr, FileResidency, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"dropFileCache", nullptr, DropFileCache, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"willNeed", nullptr, WillNeed, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"lowerThreadPriority", nullptr, LowerThreadPriority, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
