{
  "targets": [
    {
      "target_name": "moe_native",
      "sources": ["src/moe_native.cc", "src/expert_kernels.cc", "src/encode_matrix.cc", "src/kernels_isa.cc", "src/kernel_pool.cc", "src/page_residency.cc", "src/direct_read.cc", "src/dense_layer.cc", "src/dense_native.cc", "src/router.cc", "src/decode_step.cc"],
      "cflags_cc": ["-O3", "-std=c++17", "-pthread"],
      "cflags_cc!": ["-fno-exceptions"],
      "ldflags": ["-pthread"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
