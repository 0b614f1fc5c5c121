// Small Node-API helpers shared by the binding files.
#pragma once
#include <node_api.h>

#include <cstddef>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "dense_layer.h"
#include "expert_kernels.h"

namespace moe::napi {

// A typed array's data pointer and length in bytes; false when `v` is not a typed array.
inline bool typed_data(napi_env env, napi_value v, void** data, size_t* bytes) {
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

inline double num(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

// Defines each (name, function) pair as a method of `exports`.
inline void define_functions(napi_env env, napi_value exports, std::initializer_list<std::pair<const char*, napi_callback>> fns) {
  std::vector<napi_property_descriptor> props;
  for (const auto& [name, fn] : fns) props.push_back({name, nullptr, fn, nullptr, nullptr, nullptr, napi_default, nullptr});
  napi_define_properties(env, exports, props.size(), props.data());
}

// The length of an array argument; -1 for anything else.
inline int64_t array_length(napi_env env, napi_value v) {
  bool is = false;
  uint32_t len = 0;
  napi_is_array(env, v, &is);
  return is && napi_get_array_length(env, v, &len) == napi_ok ? int64_t(len) : int64_t(-1);
}

// False after throwing KERNEL_ISA_UNSUPPORTED when MOE_RUN_KERNEL_ISA names a level this CPU
// cannot run (the kernels would silently run another); bindings that compute call it first.
inline bool kernel_isa_ok(napi_env env) {
  std::string err;
  if (moe::kernel_isa_check(&err)) return true;
  napi_throw_error(env, "KERNEL_ISA_UNSUPPORTED", err.c_str());
  return false;
}

// moe_native.cc: an expert record's encodings from their code (a plain code 0..12 or a mixed
// record's; each matrix's rows whole blocks of its encoding), and the optional expert spec
// (Float64Array [activation, alpha, limit, bias]; undefined or null: the defaults). False: thrown.
bool record_encs(napi_env env, double code, size_t H, size_t F, const char* fn, moe::RecordEncs* encs);
bool expert_options(napi_env env, napi_value v, const char* fn, moe::ExpertOptions* opts);

// dense_native.cc: a layer's spec, weight blob and section table, each section checked against the
// shape the spec gives it (denseLayer's first three arguments). False: thrown.
bool dense_weights(napi_env env, napi_value spec, napi_value blob, napi_value sections, const char* fn, moe::DenseSpec* s, moe::WeightRef* w);

}  // namespace moe::napi
