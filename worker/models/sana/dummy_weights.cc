// Seeded random weights for SanaTransformer (see dummy_weights.h for the recipe).
#include "worker/models/sana/dummy_weights.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <c10/core/TensorOptions.h>

#include <algorithm>
#include <cmath>
#include <string_view>
#include <utility>

#include "worker/models/sana/ops.h"

namespace wmserve::worker::sana {
namespace {

// Training-time init of the GDN gates (spec §1.4).
constexpr double kBetaBias = 5.0;             // beta = sigmoid(5) ~ 0.993
constexpr double kDtBias = -5.0;              // with A_log 0: gamma = exp(-softplus(-5)) ~ 0.993
constexpr double kOutputGateBias = 1.27846;   // SiLU(1.27846) ~ 1: the output gate passes through
// Gain of the weights that are zero (or near zero) at training init; see the header.
constexpr double kSmallGain = 0.1;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

at::Tensor Normal(const std::vector<int64_t>& shape, double stddev, uint64_t seed,
                  const at::TensorOptions& options) {
  at::Tensor out = at::empty(shape, options);
  out.normal_(0.0, stddev, SeededGenerator(options.device(), seed));
  return out;
}

int64_t FanIn(const std::vector<int64_t>& shape) {
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  return fan_in;
}

bool IsSmallGainWeight(std::string_view name) {
  return name == "t_block.1.weight" || name == "plucker_embedder.proj.weight" ||
         name == "raymap_embedder.proj.weight" || EndsWith(name, "attn.out_proj_cam.weight") ||
         EndsWith(name, "plucker_proj.weight") || EndsWith(name, "mlp.t_conv.weight") ||
         EndsWith(name, "attn.beta_proj.weight");
}

bool IsRmsNormWeight(std::string_view name) {
  return EndsWith(name, "attn.q_norm.weight") || EndsWith(name, "attn.k_norm.weight") ||
         EndsWith(name, "attn.q_norm_cam.weight") || EndsWith(name, "attn.k_norm_cam.weight");
}

}  // namespace

at::Tensor DummyParameter(const SanaConfig& config, const std::string& name,
                          const std::vector<int64_t>& shape, uint64_t seed,
                          c10::ScalarType dtype, c10::Device device) {
  const at::TensorOptions options = at::TensorOptions().dtype(dtype).device(device);
  const uint64_t tensor_seed = TensorSeed(seed, name);

  // GDN gates and short convs (spec §1.4).
  if (EndsWith(name, "attn.beta_proj.bias")) return at::full(shape, kBetaBias, options);
  if (EndsWith(name, "attn.gate_proj.weight") || EndsWith(name, "attn.gate_proj.bias") ||
      EndsWith(name, "attn.A_log") || EndsWith(name, "attn.recall_gate") ||
      EndsWith(name, "attn.output_gate.weight")) {
    return at::zeros(shape, options);
  }
  if (EndsWith(name, "attn.dt_bias")) return at::full(shape, kDtBias, options);
  if (EndsWith(name, "attn.output_gate.bias")) return at::full(shape, kOutputGateBias, options);
  if (EndsWith(name, "attn.conv_k.weight") || EndsWith(name, "attn.conv_k_cam.weight")) {
    // (C, 1, K) causal depthwise conv: the identity is the last tap.
    at::Tensor conv = at::zeros(shape, options);
    if (!shape.empty() && shape.back() > 0) conv.select(-1, shape.back() - 1).fill_(1.0);
    return conv;
  }
  // Norms.
  if (IsRmsNormWeight(name)) return at::ones(shape, options);
  if (name == "attention_y_norm.weight") {
    return at::full(shape, config.y_norm_scale_factor, options);
  }
  // adaLN tables: randn / sqrt(C), as Sana initialises them.
  if (EndsWith(name, "scale_shift_table")) {
    return Normal(shape, 1.0 / std::sqrt(static_cast<double>(config.hidden_size)), tensor_seed,
                  options);
  }
  if (name == "y_embedder.y_embedding") return Normal(shape, 1.0, tensor_seed, options);
  if (EndsWith(name, ".bias")) return at::zeros(shape, options);
  // Everything else is a weight: N(0, gain^2 / fan_in).
  const double gain = IsSmallGainWeight(name) ? kSmallGain : 1.0;
  const double fan_in = static_cast<double>(std::max<int64_t>(1, FanIn(shape)));
  return Normal(shape, gain / std::sqrt(fan_in), tensor_seed, options);
}

SanaTensorSource DummyWeightSource(const SanaConfig& config, uint64_t seed, c10::ScalarType dtype,
                                   c10::Device device) {
  return [config, seed, dtype, device](const std::string& name,
                                       const std::vector<int64_t>& shape) {
    return DummyParameter(config, name, shape, seed, dtype, device);
  };
}

std::unique_ptr<SanaTransformer> InitDummyWeights(const SanaConfig& config, uint64_t seed,
                                                  c10::ScalarType dtype, c10::Device device) {
  auto model = std::make_unique<SanaTransformer>(config);
  model->LoadWeights(DummyWeightSource(config, seed, dtype, device), dtype, device);
  return model;
}

uint64_t WeightBytes(const SanaConfig& config, c10::ScalarType dtype) {
  return static_cast<uint64_t>(SanaTransformer::ParameterCount(config)) *
         static_cast<uint64_t>(c10::elementSize(dtype));
}

}  // namespace wmserve::worker::sana
