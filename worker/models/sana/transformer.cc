// SanaTransformer: parameters, loading, and the top-level forward (embeddings, final layer).
// The blocks are in blocks.cc.
#include "worker/models/sana/transformer.h"

#include <ATen/ops/conv3d.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/silu.h>
#include <c10/core/TensorOptions.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "worker/models/sana/camera.h"
#include "worker/models/sana/errors.h"
#include "worker/models/sana/ops.h"
#include "worker/models/sana/transformer_context.h"

namespace wmserve::worker::sana {
namespace {

[[noreturn]] void BadInput(const std::string& message) {
  throw InvalidInputError("SanaTransformer::Forward: " + message);
}

// (B, C, T, H, W) through a Conv3d with a (1, 1, 1) kernel, flattened to tokens (B, T*H*W, C).
at::Tensor PatchEmbed(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::conv3d(x, weight, bias).flatten(2).transpose(1, 2);
}

}  // namespace

SanaTransformer::SanaTransformer(SanaConfig config) : config_(std::move(config)) {
  config_.Validate();
  weights_.blocks.resize(config_.num_layers);
}

void SanaTransformer::ForEachParameter(
    const SanaConfig& cfg, SanaWeights* w,
    const std::function<void(const std::string&, std::vector<int64_t>, at::Tensor*)>& fn) {
  const int64_t c = cfg.hidden_size;
  const int64_t heads = cfg.num_heads();
  const int64_t ffn = cfg.ffn_hidden_features();
  auto slot = [&](at::Tensor SanaWeights::*member) { return w ? &(w->*member) : nullptr; };

  fn("x_embedder.proj.weight", {c, cfg.in_channels, 1, 1, 1}, slot(&SanaWeights::x_embedder_weight));
  fn("x_embedder.proj.bias", {c}, slot(&SanaWeights::x_embedder_bias));
  fn("t_embedder.mlp.0.weight", {c, cfg.timestep_embed_dim}, slot(&SanaWeights::t_mlp0_weight));
  fn("t_embedder.mlp.0.bias", {c}, slot(&SanaWeights::t_mlp0_bias));
  fn("t_embedder.mlp.2.weight", {c, c}, slot(&SanaWeights::t_mlp2_weight));
  fn("t_embedder.mlp.2.bias", {c}, slot(&SanaWeights::t_mlp2_bias));
  fn("t_block.1.weight", {6 * c, c}, slot(&SanaWeights::t_block_weight));
  fn("t_block.1.bias", {6 * c}, slot(&SanaWeights::t_block_bias));
  fn("y_embedder.y_embedding", {cfg.model_max_length, cfg.caption_channels},
     slot(&SanaWeights::y_embedding));
  fn("y_embedder.y_proj.fc1.weight", {c, cfg.caption_channels}, slot(&SanaWeights::y_fc1_weight));
  fn("y_embedder.y_proj.fc1.bias", {c}, slot(&SanaWeights::y_fc1_bias));
  fn("y_embedder.y_proj.fc2.weight", {c, c}, slot(&SanaWeights::y_fc2_weight));
  fn("y_embedder.y_proj.fc2.bias", {c}, slot(&SanaWeights::y_fc2_bias));
  fn("attention_y_norm.weight", {c}, slot(&SanaWeights::attention_y_norm));
  fn("plucker_embedder.proj.weight", {c, cfg.chunk_plucker_channels, 1, 1, 1},
     slot(&SanaWeights::plucker_embedder_weight));
  fn("plucker_embedder.proj.bias", {c}, slot(&SanaWeights::plucker_embedder_bias));
  fn("raymap_embedder.proj.weight", {c, 3, 1, 1, 1}, slot(&SanaWeights::raymap_embedder_weight));
  fn("raymap_embedder.proj.bias", {c}, slot(&SanaWeights::raymap_embedder_bias));

  for (int i = 0; i < cfg.num_layers; ++i) {
    SanaBlockWeights* b = w ? &w->blocks.at(i) : nullptr;
    const std::string p = "blocks." + std::to_string(i) + ".";
    auto bs = [&](at::Tensor SanaBlockWeights::*member) { return b ? &(b->*member) : nullptr; };
    using W = SanaBlockWeights;
    fn(p + "scale_shift_table", {6, c}, bs(&W::scale_shift_table));
    fn(p + "attn.qkv.weight", {3 * c, c}, bs(&W::qkv_weight));
    fn(p + "attn.q_norm.weight", {c}, bs(&W::q_norm));
    fn(p + "attn.k_norm.weight", {c}, bs(&W::k_norm));
    fn(p + "attn.beta_proj.weight", {heads, c}, bs(&W::beta_proj_weight));
    fn(p + "attn.beta_proj.bias", {heads}, bs(&W::beta_proj_bias));
    fn(p + "attn.gate_proj.weight", {heads, c}, bs(&W::gate_proj_weight));
    fn(p + "attn.gate_proj.bias", {heads}, bs(&W::gate_proj_bias));
    fn(p + "attn.A_log", {heads}, bs(&W::a_log));
    fn(p + "attn.dt_bias", {heads}, bs(&W::dt_bias));
    fn(p + "attn.recall_gate", {1}, bs(&W::recall_gate));
    fn(p + "attn.output_gate.weight", {c, c}, bs(&W::output_gate_weight));
    fn(p + "attn.output_gate.bias", {c}, bs(&W::output_gate_bias));
    fn(p + "attn.proj.weight", {c, c}, bs(&W::proj_weight));
    fn(p + "attn.proj.bias", {c}, bs(&W::proj_bias));
    if (cfg.HasShortConv(i)) {
      fn(p + "attn.conv_k.weight", {c, 1, cfg.conv_kernel_size}, bs(&W::conv_k));
      fn(p + "attn.conv_k_cam.weight", {c, 1, cfg.conv_kernel_size}, bs(&W::conv_k_cam));
    }
    const int64_t cam = cfg.cam_dim();
    fn(p + "attn.q_proj_cam.weight", {cam, c}, bs(&W::q_proj_cam_weight));
    fn(p + "attn.q_proj_cam.bias", {cam}, bs(&W::q_proj_cam_bias));
    fn(p + "attn.k_proj_cam.weight", {cam, c}, bs(&W::k_proj_cam_weight));
    fn(p + "attn.k_proj_cam.bias", {cam}, bs(&W::k_proj_cam_bias));
    fn(p + "attn.v_proj_cam.weight", {cam, c}, bs(&W::v_proj_cam_weight));
    fn(p + "attn.v_proj_cam.bias", {cam}, bs(&W::v_proj_cam_bias));
    fn(p + "attn.out_proj_cam.weight", {c, cam}, bs(&W::out_proj_cam_weight));
    fn(p + "attn.out_proj_cam.bias", {c}, bs(&W::out_proj_cam_bias));
    fn(p + "attn.q_norm_cam.weight", {c}, bs(&W::q_norm_cam));
    fn(p + "attn.k_norm_cam.weight", {c}, bs(&W::k_norm_cam));
    fn(p + "cross_attn.q_linear.weight", {c, c}, bs(&W::cross_q_weight));
    fn(p + "cross_attn.q_linear.bias", {c}, bs(&W::cross_q_bias));
    fn(p + "cross_attn.kv_linear.weight", {2 * c, c}, bs(&W::cross_kv_weight));
    fn(p + "cross_attn.kv_linear.bias", {2 * c}, bs(&W::cross_kv_bias));
    fn(p + "cross_attn.proj.weight", {c, c}, bs(&W::cross_proj_weight));
    fn(p + "cross_attn.proj.bias", {c}, bs(&W::cross_proj_bias));
    fn(p + "cross_attn.q_norm.weight", {c}, bs(&W::cross_q_norm));
    fn(p + "cross_attn.k_norm.weight", {c}, bs(&W::cross_k_norm));
    fn(p + "mlp.inverted_conv.conv.weight", {2 * ffn, c, 1, 1}, bs(&W::inverted_conv_weight));
    fn(p + "mlp.inverted_conv.conv.bias", {2 * ffn}, bs(&W::inverted_conv_bias));
    fn(p + "mlp.depth_conv.conv.weight", {2 * ffn, 1, 3, 3}, bs(&W::depth_conv_weight));
    fn(p + "mlp.depth_conv.conv.bias", {2 * ffn}, bs(&W::depth_conv_bias));
    fn(p + "mlp.point_conv.conv.weight", {c, ffn, 1, 1}, bs(&W::point_conv_weight));
    fn(p + "mlp.t_conv.weight", {c, c, cfg.t_kernel_size, 1}, bs(&W::t_conv_weight));
    if (cfg.HasPluckerProj(i)) {
      fn(p + "plucker_proj.weight", {c, c}, bs(&W::plucker_proj_weight));
      fn(p + "plucker_proj.bias", {c}, bs(&W::plucker_proj_bias));
    }
  }

  fn("final_layer.scale_shift_table", {2, c}, slot(&SanaWeights::final_scale_shift_table));
  fn("final_layer.linear.weight", {cfg.out_channels(), c}, slot(&SanaWeights::final_linear_weight));
  fn("final_layer.linear.bias", {cfg.out_channels()}, slot(&SanaWeights::final_linear_bias));
}

std::map<std::string, std::vector<int64_t>> SanaTransformer::ExpectedParameters(
    const SanaConfig& config) {
  std::map<std::string, std::vector<int64_t>> out;
  ForEachParameter(config, nullptr,
                   [&](const std::string& name, std::vector<int64_t> shape, at::Tensor*) {
                     out.emplace(name, std::move(shape));
                   });
  return out;
}

int64_t SanaTransformer::ParameterCount(const SanaConfig& config) {
  int64_t total = 0;
  ForEachParameter(config, nullptr, [&](const std::string&, std::vector<int64_t> shape, at::Tensor*) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    total += n;
  });
  return total;
}

const std::set<std::string>& SanaTransformer::IgnoredTensors() {
  // The released checkpoint stores the sincos `pos_embed` buffer of the Sana base class; the
  // model uses RoPE and never reads it.
  static const std::set<std::string> kIgnored = {"pos_embed"};
  return kIgnored;
}

void SanaTransformer::LoadWeights(const SafetensorsFile& file, c10::ScalarType dtype,
                                  c10::Device device) {
  file.CheckTensors(ExpectedParameters(), IgnoredTensors());
  LoadFrom([&](const std::string& name, const std::vector<int64_t>&) {
    return file.Load(name, dtype, device);
  }, dtype, device);
}

void SanaTransformer::LoadWeights(const SanaTensorSource& source, c10::ScalarType dtype,
                                  c10::Device device) {
  LoadFrom([&](const std::string& name, const std::vector<int64_t>& shape) {
    at::Tensor value = source(name, shape);
    if (!value.defined() || value.sizes() != c10::IntArrayRef(shape)) {
      throw SafetensorsError("SanaTransformer::LoadWeights: tensor '" + name + "' has shape " +
                             ShapeOf(value) + ", expected " + ShapeString(shape));
    }
    return value.to(device, dtype);
  }, dtype, device);
}

void SanaTransformer::LoadFrom(const SanaTensorSource& source, c10::ScalarType dtype,
                               c10::Device device) {
  SanaWeights fresh;
  fresh.blocks.resize(config_.num_layers);
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  // The camera q/k/v projections live in one (3C, C) buffer so that the forward runs them as one
  // GEMM like the reference (`_prepare_cam_qkv`); the official tensors are views into it.
  for (SanaBlockWeights& b : fresh.blocks) {
    const int64_t cam = config_.cam_dim(), c = config_.hidden_size;
    b.cam_qkv_weight = at::empty({3 * cam, c}, options);
    b.cam_qkv_bias = at::empty({3 * cam}, options);
    b.q_proj_cam_weight = b.cam_qkv_weight.narrow(0, 0, cam);
    b.k_proj_cam_weight = b.cam_qkv_weight.narrow(0, cam, cam);
    b.v_proj_cam_weight = b.cam_qkv_weight.narrow(0, 2 * cam, cam);
    b.q_proj_cam_bias = b.cam_qkv_bias.narrow(0, 0, cam);
    b.k_proj_cam_bias = b.cam_qkv_bias.narrow(0, cam, cam);
    b.v_proj_cam_bias = b.cam_qkv_bias.narrow(0, 2 * cam, cam);
  }
  ForEachParameter(config_, &fresh,
                   [&](const std::string& name, std::vector<int64_t> shape, at::Tensor* slot) {
                     StoreParameter(slot, source(name, shape));
                   });
  weights_ = std::move(fresh);
  dtype_ = dtype;
  device_ = device;
  loaded_ = true;
}

const at::Tensor& SanaTransformer::Parameter(const std::string& name) const {
  const at::Tensor* found = nullptr;
  // ForEachParameter wants a mutable SanaWeights; it only takes member addresses.
  ForEachParameter(config_, const_cast<SanaWeights*>(&weights_),
                   [&](const std::string& n, std::vector<int64_t>, at::Tensor* slot) {
                     if (n == name) found = slot;
                   });
  if (!found) throw std::out_of_range("SanaTransformer: no parameter named '" + name + "'");
  return *found;
}

at::Tensor SanaTransformer::Forward(const at::Tensor& hidden_states, const at::Tensor& timestep,
                                    const at::Tensor& encoder_hidden_states,
                                    const at::Tensor& encoder_attention_mask,
                                    const at::Tensor& camera_conditions,
                                    const at::Tensor& chunk_plucker,
                                    const SanaForwardOptions& options) const {
  Context ctx;
  return ForwardImpl(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                     camera_conditions, chunk_plucker, options, ctx);
}

at::Tensor SanaTransformer::ForwardImpl(const at::Tensor& hidden_states,
                                        const at::Tensor& timestep,
                                        const at::Tensor& encoder_hidden_states,
                                        const at::Tensor& encoder_attention_mask,
                                        const at::Tensor& camera_conditions,
                                        const at::Tensor& chunk_plucker,
                                        const SanaForwardOptions& options, Context& ctx) const {
  if (!loaded_) {
    throw std::runtime_error("SanaTransformer::Forward: no weights loaded (call LoadWeights)");
  }
  const SanaConfig& cfg = config_;
  const SanaWeights& w = weights_;

  // --- input checks ------------------------------------------------------------------------
  if (!hidden_states.defined() || hidden_states.dim() != 5 ||
      hidden_states.size(1) != cfg.in_channels || hidden_states.numel() == 0) {
    BadInput("hidden_states has shape " + ShapeOf(hidden_states) + ", expected (B, " +
             std::to_string(cfg.in_channels) + ", T, H, W)");
  }
  const int64_t b = hidden_states.size(0), frames = hidden_states.size(2);
  const int64_t height = hidden_states.size(3), width = hidden_states.size(4);
  if (!timestep.defined() || timestep.sizes() != c10::IntArrayRef({b, 1, frames})) {
    BadInput("timestep has shape " + ShapeOf(timestep) + ", expected (B, 1, T) = [" +
             std::to_string(b) + ", 1, " + std::to_string(frames) + "]");
  }
  if (!encoder_hidden_states.defined() || encoder_hidden_states.dim() != 4 ||
      encoder_hidden_states.size(0) != b || encoder_hidden_states.size(1) != 1 ||
      encoder_hidden_states.size(3) != cfg.caption_channels || encoder_hidden_states.size(2) < 1) {
    BadInput("encoder_hidden_states has shape " + ShapeOf(encoder_hidden_states) +
             ", expected (B, 1, L, " + std::to_string(cfg.caption_channels) + ") with B=" +
             std::to_string(b));
  }
  const int64_t text_len = encoder_hidden_states.size(2);
  if (encoder_attention_mask.defined() &&
      encoder_attention_mask.sizes() != c10::IntArrayRef({b, text_len})) {
    BadInput("encoder_attention_mask has shape " + ShapeOf(encoder_attention_mask) +
             ", expected (B, L) = [" + std::to_string(b) + ", " + std::to_string(text_len) + "]");
  }
  if (camera_conditions.defined() &&
      camera_conditions.sizes() != c10::IntArrayRef({b, frames, 20})) {
    BadInput("camera_conditions has shape " + ShapeOf(camera_conditions) +
             ", expected (B, T, 20) = [" + std::to_string(b) + ", " + std::to_string(frames) +
             ", 20]");
  }
  if (chunk_plucker.defined() &&
      chunk_plucker.sizes() !=
          c10::IntArrayRef({b, cfg.chunk_plucker_channels, frames, height, width})) {
    BadInput("chunk_plucker has shape " + ShapeOf(chunk_plucker) + ", expected (B, " +
             std::to_string(cfg.chunk_plucker_channels) + ", T, H, W) = [" + std::to_string(b) +
             ", " + std::to_string(cfg.chunk_plucker_channels) + ", " + std::to_string(frames) +
             ", " + std::to_string(height) + ", " + std::to_string(width) + "]");
  }

  ctx.options = &options;
  ctx.batch = b;
  ctx.frames = frames;
  ctx.height = height;
  ctx.width = width;
  ctx.tokens_per_frame = height * width;
  ctx.tokens = frames * ctx.tokens_per_frame;
  const int64_t c = cfg.hidden_size;

  // --- embeddings --------------------------------------------------------------------------
  // timestep.long().float(): truncation toward zero (timestep_norm_scale_factor == 1).
  const at::Tensor ts = timestep.to(device_).to(at::kLong).to(at::kFloat);
  ctx.Tap("inter.timestep_truncated", ts);
  ctx.Tap("inter.timestep_used", ts.flatten());

  at::Tensor x = PatchEmbed(hidden_states.to(device_, dtype_), w.x_embedder_weight,
                            w.x_embedder_bias);  // (B, N, C)
  ctx.Tap("inter.x_embed", x);

  if (camera_conditions.defined()) {
    const at::Tensor raymats = ComputeRayMats(camera_conditions.to(device_), height, width);
    ctx.Tap("inter.raymats", raymats);
    ctx.camera = true;
    ctx.ray_p = raymats.to(at::kFloat).reshape({b, ctx.tokens, 4, 4});
    ctx.ray_p_t = ctx.ray_p.transpose(-1, -2);
    ctx.ray_p_inv = InvertRigid(ctx.ray_p);
  }
  if (chunk_plucker.defined()) {
    ctx.plucker_emb = PatchEmbed(chunk_plucker.to(device_, dtype_), w.plucker_embedder_weight,
                                 w.plucker_embedder_bias);
    ctx.Tap("inter.plucker_emb", ctx.plucker_emb);
  }

  if (ctx.sample_first_frames.empty()) {
    ctx.rope = WanRopeTable(cfg.head_dim(), frames, height, width, cfg.rope_theta,
                            options.rope_first_frame, device_);
  } else {
    ctx.rope = BatchedWanRopeTable(cfg.head_dim(), frames, height, width, cfg.rope_theta,
                                   ctx.sample_first_frames, device_);
  }
  ctx.Tap("inter.rope_freqs", ctx.rope.Stacked());
  {
    std::vector<int64_t> pairs;
    for (int p : cfg.CameraRopePairIndices()) pairs.push_back(p);
    ctx.cam_rope = ctx.rope.Select(pairs);
  }

  // t_embedder (sinusoid -> Linear -> SiLU -> Linear), t_block (SiLU -> Linear), per frame.
  at::Tensor t = TimestepSinusoid(ts.flatten(), cfg.timestep_embed_dim, cfg.timestep_max_period)
                     .to(dtype_);
  t = at::linear(at::silu(at::linear(t, w.t_mlp0_weight, w.t_mlp0_bias)), w.t_mlp2_weight,
                 w.t_mlp2_bias);
  const at::Tensor t0 = at::linear(at::silu(t), w.t_block_weight, w.t_block_bias);
  t = t.view({b, 1, frames, c});
  ctx.t0 = t0.view({b, 1, frames, 6 * c});
  ctx.Tap("inter.t_emb", t);
  ctx.Tap("inter.t0", ctx.t0);

  // Caption: fc1 -> GELU(tanh) -> fc2, then attention_y_norm.
  at::Tensor y = at::linear(encoder_hidden_states.to(device_, dtype_), w.y_fc1_weight,
                            w.y_fc1_bias);
  y = at::linear(at::gelu(y, "tanh"), w.y_fc2_weight, w.y_fc2_bias);
  ctx.Tap("inter.y_proj", y);
  ctx.y = RmsNorm(y, w.attention_y_norm, cfg.y_norm_eps);
  ctx.Tap("inter.y_embed", ctx.y);
  if (encoder_attention_mask.defined()) {
    // mask.to(int16), then (1 - mask.to(dtype)) * -10000 as an additive key bias.
    const at::Tensor m = encoder_attention_mask.to(device_).to(at::kShort).to(dtype_);
    ctx.text_mask_bias = m.neg().add(1.0).mul(cfg.text_mask_bias).view({b, 1, 1, text_len});
  }

  // --- blocks ------------------------------------------------------------------------------
  for (int i = 0; i < cfg.num_layers; ++i) {
    x = Block(i, x, ctx);
    ctx.Tap("block." + std::to_string(i) + ".out", x);
  }

  // --- final layer: per-frame (shift, scale) = table + t, LN, modulate, Linear --------------
  const at::Tensor mod = w.final_scale_shift_table.view({1, 1, 2, c}).add(t.transpose(1, 2));
  const at::Tensor shift = mod.narrow(2, 0, 1), scale = mod.narrow(2, 1, 1);  // (B, T, 1, C)
  at::Tensor out = Modulate(LayerNormNoAffine(x, cfg.layer_norm_eps)
                                .reshape({b, frames, ctx.tokens_per_frame, c}),
                            shift, scale)
                       .reshape({b, ctx.tokens, c});
  out = at::linear(out, w.final_linear_weight, w.final_linear_bias);
  ctx.Tap("inter.final_layer_out", out);
  // Unpatchify (patch 1x1x1): (B, N, Cout) -> (B, Cout, T, H, W).
  return out.reshape({b, frames, height, width, cfg.out_channels()})
      .permute({0, 4, 1, 2, 3})
      .contiguous();
}

}  // namespace wmserve::worker::sana
