// File: seeded random ("dummy") weights for SanaTransformer, at any preset.
//
// Depends on LibTorch and the C++ standard library only.
//
// For running the serving path (and benchmarks) without the released checkpoint. The values
// follow the training-time init of the gates (spec §1.4) so that the GDN recurrence and the
// residual stream stay finite at full depth and length; they generate noise-like videos, not
// anything meaningful. Per parameter (official names):
//   * GDN gates: attn.beta_proj.bias 5 (beta ~ 0.993), attn.gate_proj weight and bias 0,
//     attn.dt_bias -5, attn.A_log 0 (gamma ~ 0.993), attn.output_gate weight 0 and bias 1.27846
//     (SiLU(1.27846) = 1), short convs attn.conv_k / attn.conv_k_cam the identity (last tap 1),
//     attn.recall_gate 0;
//   * RMSNorm weights (attn.{q,k}_norm, attn.{q,k}_norm_cam, cross_attn.{q,k}_norm) 1,
//     attention_y_norm y_norm_scale_factor (its training init);
//   * scale_shift_table / final_layer.scale_shift_table: N(0, 1) / sqrt(C) (the Sana init);
//   * every other weight N(0, gain^2 / fan_in) (fan_in = product of the trailing dims), biases 0,
//     gain 1 except: t_block (the adaLN modulation, so the residual gates stay ~0.1),
//     attn.beta_proj (beta stays near its init) and the camera / Plücker paths that are
//     zero-initialised in training (attn.out_proj_cam, plucker_proj, plucker_embedder,
//     raymap_embedder, mlp.t_conv): gain 0.1, small but non-zero so the camera path is not a
//     no-op (spec §9);
//   * y_embedder.y_embedding (unused) N(0, 1).
// Each tensor is drawn from its own generator seeded with (seed, name), on the target device in
// the target dtype: deterministic for (seed, device type, dtype), independent of load order, and
// no host staging (a 2.6B model in bf16 needs ~5.3 GB on the device and nothing more).
#ifndef WMSERVE_WORKER_MODELS_SANA_DUMMY_WEIGHTS_H_
#define WMSERVE_WORKER_MODELS_SANA_DUMMY_WEIGHTS_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "worker/models/sana/sana_config.h"
#include "worker/models/sana/transformer.h"

namespace wmserve::worker::sana {

// One parameter under the recipe above, as `dtype` on `device`. The recipe is picked by the
// official name alone (any name gets a value; unknown ones the generic weight / zero bias).
at::Tensor DummyParameter(const SanaConfig& config, const std::string& name,
                          const std::vector<int64_t>& shape, uint64_t seed,
                          c10::ScalarType dtype, c10::Device device);

// A SanaTensorSource (transformer.h) producing DummyParameter values for `config`.
SanaTensorSource DummyWeightSource(const SanaConfig& config, uint64_t seed, c10::ScalarType dtype,
                                   c10::Device device);

// A SanaTransformer for `config` with dummy weights loaded as `dtype` on `device`. Throws
// ConfigError for an invalid config; c10::Error (e.g. out of memory) from the allocation.
std::unique_ptr<SanaTransformer> InitDummyWeights(const SanaConfig& config, uint64_t seed,
                                                  c10::ScalarType dtype = c10::ScalarType::Float,
                                                  c10::Device device = c10::Device(c10::kCPU));

// Bytes the loaded parameters occupy: ParameterCount(config) x the element size of `dtype`
// (the camera q/k/v buffer holds exactly its three official tensors, so nothing more).
uint64_t WeightBytes(const SanaConfig& config, c10::ScalarType dtype);

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_DUMMY_WEIGHTS_H_
