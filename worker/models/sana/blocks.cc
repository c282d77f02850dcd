// SanaTransformer blocks (`SanaVideoMSCamCtrlBlock.forward_frame_aware`): GDN and softmax
// self-attention with the UCPE camera branch, Plücker injection, text cross-attention and the
// GLUMBConvTemp FFN. The reference classes each function reproduces are named in its comment.
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/conv1d.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/silu.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "worker/models/sana/gdn.h"
#include "worker/models/sana/ops.h"
#include "worker/models/sana/transformer.h"
#include "worker/models/sana/transformer_context.h"

namespace wmserve::worker::sana {
namespace {

// `_apply_ray_projmat` on the first half of every head and the camera RoPE on the second half
// (`_prepare_ray_apply_fns`), x (B, H, N, D) in the (B, H, N, D) layout of the reference's
// apply functions. The 4x4 products run in float32 (the matrices' dtype), the rotation in
// float64; the result has x's dtype.
at::Tensor UcpeTransform(const at::Tensor& x, const at::Tensor& matrices,
                         const RopeTable& cam_rope, bool inverse_rope) {
  const int64_t b = x.size(0), h = x.size(1), n = x.size(2), d = x.size(3);
  const int64_t half = d / 2;
  const at::Tensor groups = x.narrow(3, 0, half).to(matrices.scalar_type())
                                .reshape({b, h, n, half / 4, 4, 1});
  const at::Tensor projected = at::matmul(matrices.view({b, 1, n, 1, 4, 4}), groups)
                                   .reshape({b, h, n, half})
                                   .to(x.scalar_type());
  const at::Tensor rotated = ApplyRopeLastDim(x.narrow(3, half, d - half), cam_rope, inverse_rope);
  return at::cat({projected, rotated}, 3);
}

// `_downscale_to_reference_rms` on (B, H, D, N): per (b, h, n) the transformed vector is scaled
// down to the RMS (over D) of the reference vector, never up.
at::Tensor DownscaleToReferenceRms(const at::Tensor& ref, const at::Tensor& transformed) {
  constexpr double kEps = 1e-6;
  const at::Tensor ref_rms = ref.square().mean({2}, true).add(kEps).sqrt();
  const at::Tensor tr_rms = transformed.square().mean({2}, true).add(kEps).sqrt();
  return transformed.mul(ref_rms.div(tr_rms.clamp_min(kEps)).clamp_max(1.0));
}

// (B, H, D, N) -> (B, N, H*D): `out.reshape(B, C, N).permute(0, 2, 1)`.
at::Tensor HeadsToTokens(const at::Tensor& x) {
  return x.reshape({x.size(0), x.size(1) * x.size(2), x.size(3)}).permute({0, 2, 1});
}

// The key scale of `GDN._key_scale` ("dim_spatial"): D^-0.5 * S^-0.5, in double as Python.
double KeyScale(int64_t head_dim, int64_t tokens_per_frame) {
  return std::pow(static_cast<double>(head_dim), -0.5) *
         std::pow(static_cast<double>(tokens_per_frame), -0.5);
}

// The camera softmax's SDPA (`_forward_cam_branch_softmax`): head dims not in {32, 64, 128, 256}
// and below 256 are zero-padded to 128 (or 256) and SDPA runs with its default scale, i.e.
// 1/sqrt(padded D); the output is sliced back.
// With padded_scale false (the streaming path) the scale is 1/sqrt(D) and nothing is padded.
at::Tensor CameraSoftmaxAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& mask = {}, bool padded_scale = true) {
  const int64_t d = q.size(-1);
  const bool pad = padded_scale && d != 32 && d != 64 && d != 128 && d != 256 && d < 256;
  if (!pad) return ScaledDotProductAttention(q, k, v, mask);
  const int64_t extra = (d <= 128 ? 128 : 256) - d;
  const at::Tensor out =
      ScaledDotProductAttention(at::constant_pad_nd(q, {0, extra}, 0),
                                at::constant_pad_nd(k, {0, extra}, 0),
                                at::constant_pad_nd(v, {0, extra}, 0), mask);
  return out.narrow(-1, 0, d);
}

// --- chunk-causal / streaming temporal operations -------------------------------------------

// A causal depthwise conv (FLA ShortConvolution) along the last dim of seq (M, C, L).
at::Tensor CausalDepthwiseConv(const at::Tensor& seq, const at::Tensor& weight) {
  const int64_t kernel = weight.size(2), len = seq.size(-1);
  return at::conv1d(seq, weight, {}, /*stride=*/1, /*padding=*/kernel - 1, /*dilation=*/1,
                    /*groups=*/seq.size(1))
      .narrow(-1, 0, len);
}

// (B, T*S, C) tokens -> (B*S, C, T) conv sequences, and back.
at::Tensor TokensToConvSeq(const at::Tensor& x, int64_t frames) {
  const int64_t b = x.size(0), c = x.size(2), s = x.size(1) / frames;
  return x.reshape({b, frames, s, c}).permute({0, 2, 3, 1}).reshape({b * s, c, frames});
}
at::Tensor ConvSeqToTokens(const at::Tensor& seq, int64_t batch, int64_t frames) {
  const int64_t c = seq.size(1), s = seq.size(0) / batch;
  return seq.reshape({batch, s, c, frames}).permute({0, 3, 1, 2}).reshape({batch, frames * s, c});
}

// The chunk-causal short conv (`ChunkCausalGDN`): forward causal conv over the whole sequence,
// backward (anti-causal) conv restarted inside every chunk (zero right edge), centre tap once.
at::Tensor ChunkCausalShortConv(const at::Tensor& x, const at::Tensor& weight, int64_t frames,
                                const std::vector<int64_t>& chunk_sizes) {
  const int64_t c = x.size(2), kernel = weight.size(2);
  const at::Tensor seq = TokensToConvSeq(x, frames);
  const at::Tensor fwd = CausalDepthwiseConv(seq, weight);
  std::vector<at::Tensor> parts;
  int64_t start = 0;
  for (const int64_t len : chunk_sizes) {
    parts.push_back(CausalDepthwiseConv(seq.narrow(-1, start, len).flip({-1}), weight).flip({-1}));
    start += len;
  }
  const at::Tensor bwd = at::cat(parts, -1);
  const at::Tensor center = seq.mul(weight.select(1, 0).select(1, kernel - 1).view({1, c, 1}));
  return ConvSeqToTokens(fwd.add(bwd).sub(center), x.size(0), frames);
}

// The streaming short conv of one chunk: the forward conv's left context is `tail` (B, f, S, C),
// the last f <= K-1 frames of the input before this chunk (undefined: none); the backward conv
// stays inside the chunk. If new_tail is non-null it receives the last min(K-1, f + T) input
// frames (dense copy).
at::Tensor StreamingShortConv(const at::Tensor& x, const at::Tensor& weight, int64_t frames,
                              const at::Tensor& tail, at::Tensor* new_tail) {
  const int64_t b = x.size(0), c = x.size(2), s = x.size(1) / frames, kernel = weight.size(2);
  const at::Tensor seq = TokensToConvSeq(x, frames);
  const int64_t f = tail.defined() ? tail.size(1) : 0;
  at::Tensor fwd;
  if (f > 0) {
    const at::Tensor left = tail.to(seq.scalar_type()).permute({0, 2, 3, 1}).reshape({b * s, c, f});
    fwd = CausalDepthwiseConv(at::cat({left, seq}, -1), weight).narrow(-1, f, frames);
  } else {
    fwd = CausalDepthwiseConv(seq, weight);
  }
  const at::Tensor bwd = CausalDepthwiseConv(seq.flip({-1}), weight).flip({-1});
  const at::Tensor center = seq.mul(weight.select(1, 0).select(1, kernel - 1).view({1, c, 1}));
  if (new_tail != nullptr) {
    at::Tensor all = x.reshape({b, frames, s, c});
    if (f > 0) all = at::cat({tail.to(all.scalar_type()), all}, 1);
    const int64_t keep = std::min<int64_t>(kernel - 1, all.size(1));
    *new_tail = all.narrow(1, all.size(1) - keep, keep).clone(at::MemoryFormat::Contiguous);
  }
  return ConvSeqToTokens(fwd.add(bwd).sub(center), b, frames);
}

// `left` (B, C, f, HW) with f <= pad frames (undefined: none), zero-filled in front to `pad`.
at::Tensor LeftContext(const at::Tensor& left, const at::Tensor& like, int64_t pad) {
  const int64_t f = left.defined() ? left.size(2) : 0;
  at::Tensor zeros = at::zeros({like.size(0), like.size(1), pad - f, like.size(3)}, like.options());
  return f == 0 ? zeros : at::cat({zeros, left.to(like.scalar_type())}, 2);
}

// x + t_conv(x) over one chunk seq (B, C, T, HW) with `pad` left-context frames `left` (already
// LeftContext'ed) and zeros on the right.
at::Tensor TConvChunk(const at::Tensor& seq, const at::Tensor& weight, const at::Tensor& left,
                      int64_t pad) {
  const at::Tensor right = at::zeros({seq.size(0), seq.size(1), pad, seq.size(3)}, seq.options());
  return seq.add(at::conv2d(at::cat({left, seq, right}, 2), weight));
}

// The cached K/V entry of `chunk` in a softmax block's cache.
const SanaBlockCache::ChunkKv& CachedChunkKv(const SanaBlockCache* block, int64_t chunk) {
  if (block != nullptr) {
    for (const SanaBlockCache::ChunkKv& e : block->kv) {
      if (e.chunk == chunk) return e;
    }
  }
  throw std::runtime_error("SanaTransformer::ForwardChunk: chunk " + std::to_string(chunk) +
                           "'s K/V are not in the streaming cache");
}

}  // namespace

// Both attention kinds end alike. The camera branch's restored heads (B, H, N, D) become the
// camera contribution added to the attention output...
at::Tensor SanaTransformer::AddCameraContribution(const at::Tensor& restored, const SanaBlockWeights& w,
                                                  const std::string& p, const Context& ctx,
                                                  const at::Tensor& combined) {
  const at::Tensor cam_raw = HeadsToTokens(restored);
  ctx.Tap(p + "cam_raw", cam_raw);
  const at::Tensor cam_contrib = at::linear(cam_raw, w.out_proj_cam_weight, w.out_proj_cam_bias);
  ctx.Tap(p + "cam_contrib", cam_contrib);
  const at::Tensor out = combined.add(cam_contrib);
  ctx.Tap(p + "attn_combined", out);
  return out;
}

// ...and the shared output gate (SiLU in float32) and projection are applied once.
at::Tensor SanaTransformer::GatedOutput(const at::Tensor& h, const SanaBlockWeights& w, const std::string& p,
                                        const Context& ctx, const at::Tensor& combined) {
  const at::Tensor gate =
      at::silu(at::linear(h, w.output_gate_weight, w.output_gate_bias).to(at::kFloat));
  const at::Tensor gated = combined.mul(gate);
  ctx.Tap(p + "attn_gated", gated);
  return at::linear(gated.to(w.proj_weight.scalar_type()), w.proj_weight, w.proj_bias);
}

at::Tensor SanaTransformer::Block(int index, const at::Tensor& x_in, const Context& ctx) const {
  const SanaBlockWeights& w = weights_.blocks[index];
  const int64_t b = ctx.batch, t = ctx.frames, s = ctx.tokens_per_frame, n = ctx.tokens;
  const int64_t c = config_.hidden_size;
  const std::string p = "block." + std::to_string(index) + ".";

  // Per-frame adaLN-single: table (6, C) + t0 (B, 1, T, 6C) -> six (B, T, 1, C) tensors.
  const at::Tensor mod = w.scale_shift_table.view({1, 1, 6, c}).add(ctx.t0.reshape({b, t, 6, c}));
  auto part = [&](int64_t i) { return mod.narrow(2, i, 1); };
  const at::Tensor shift_msa = part(0), scale_msa = part(1), gate_msa = part(2);
  const at::Tensor shift_mlp = part(3), scale_mlp = part(4), gate_mlp = part(5);

  at::Tensor x = x_in;
  const at::Tensor h = Modulate(LayerNormNoAffine(x, config_.layer_norm_eps).reshape({b, t, s, c}),
                                shift_msa, scale_msa)
                           .reshape({b, n, c});
  ctx.Tap(p + "attn_in", h);
  const at::Tensor attn = config_.IsSoftmaxBlock(index) ? SoftmaxAttention(index, h, ctx)
                                                        : GdnAttention(index, h, ctx);
  ctx.Tap(p + "attn_out", attn);
  x = x.add(gate_msa.mul(attn.reshape({b, t, s, c})).reshape({b, n, c}));

  if (ctx.plucker_emb.defined() && config_.HasPluckerProj(index)) {
    const at::Tensor add = at::linear(ctx.plucker_emb, w.plucker_proj_weight, w.plucker_proj_bias);
    ctx.Tap(p + "plucker_add", add);
    x = x.add(add);
  }

  ctx.Tap(p + "cross_in", x);
  const at::Tensor cross = CrossAttention(index, x, ctx);
  ctx.Tap(p + "cross_out", cross);
  x = x.add(cross);

  const at::Tensor h2 = Modulate(LayerNormNoAffine(x, config_.layer_norm_eps).reshape({b, t, s, c}),
                                 shift_mlp, scale_mlp)
                            .reshape({b, n, c});
  ctx.Tap(p + "mlp_in", h2);
  const at::Tensor mlp = Ffn(index, h2, ctx);
  ctx.Tap(p + "mlp_out", mlp);
  return x.add(gate_mlp.mul(mlp.reshape({b, t, s, c})).reshape({b, n, c}));
}

// `BidirectionalGDNUCPESinglePathLiteLA.forward` (main branch `BidirectionalGDN`, camera branch
// single-path numerator-only scan), with the post-UCPE downscale as SanaForwardOptions says.
at::Tensor SanaTransformer::GdnAttention(int index, const at::Tensor& h, const Context& ctx) const {
  const SanaBlockWeights& w = weights_.blocks[index];
  const SanaForwardOptions& opt = *ctx.options;
  const int64_t b = ctx.batch, t = ctx.frames, s = ctx.tokens_per_frame, n = ctx.tokens;
  const int64_t c = config_.hidden_size, heads = config_.num_heads(), d = config_.head_dim();
  const double key_scale = KeyScale(d, s);
  const std::string p = "block." + std::to_string(index) + ".";

  // Shared gates: beta per token (B, H, T, S), decay per frame (B, H, T), float32.
  const FrameGates gates = ComputeFrameGates(h, t, s, w.beta_proj_weight, w.beta_proj_bias,
                                             w.gate_proj_weight, w.gate_proj_bias, w.a_log,
                                             w.dt_bias);
  ctx.Tap(p + "beta", gates.beta);
  ctx.Tap(p + "decay", gates.decay);

  // --- main branch ---
  const at::Tensor qkv = at::linear(h, w.qkv_weight).reshape({b, n, 3, heads, d});
  at::Tensor q = qkv.select(2, 0), k = qkv.select(2, 1), v = qkv.select(2, 2);
  const SanaBlockCache* cached = ctx.CachedBlock(index);
  SanaBlockCache* saved = ctx.SavedBlock(index);
  auto short_conv = [&](const at::Tensor& raw, const at::Tensor& weight,
                        at::Tensor SanaBlockCache::*tail) {
    switch (ctx.mode) {
      case Context::Mode::kChunkCausal:
        return ChunkCausalShortConv(raw, weight, t, ctx.chunk_sizes);
      case Context::Mode::kStreaming:
        return StreamingShortConv(raw, weight, t, cached ? cached->*tail : at::Tensor(),
                                  saved ? &(saved->*tail) : nullptr);
      case Context::Mode::kBidirectional:
        break;
    }
    return BidirectionalShortConv(raw, weight, t);
  };
  k = short_conv(k.reshape({b, n, c}), w.conv_k, &SanaBlockCache::conv_k_tail)
          .reshape({b, n, heads, d});
  q = RmsNorm(q.reshape({b, n, c}), w.q_norm, config_.qk_norm_eps).reshape({b, n, heads, d});
  k = RmsNorm(k.reshape({b, n, c}), w.k_norm, config_.qk_norm_eps).reshape({b, n, heads, d});
  q = q.relu();
  k = k.relu().mul(key_scale);
  GdnScanInputs main;
  main.q = q.permute({0, 2, 3, 1});  // (B, H, D, N)
  main.k = k.permute({0, 2, 3, 1});
  main.v = v.permute({0, 2, 3, 1});
  main.q_rot = ApplyRopeHeadsFirst(main.q, ctx.rope);
  main.k_rot = ApplyRopeHeadsFirst(main.k, ctx.rope);
  main.beta = gates.beta;
  main.decay = gates.decay;
  if (ctx.tapping()) {
    ctx.Tap(p + "main.in.q", main.q);
    ctx.Tap(p + "main.in.k", main.k);
    ctx.Tap(p + "main.in.v", main.v);
    ctx.Tap(p + "main.in.q_rot", main.q_rot);
    ctx.Tap(p + "main.in.k_rot", main.k_rot);
  }
  at::Tensor main_out;
  if (ctx.mode == Context::Mode::kChunkCausal) {
    main_out = GdnChunkCausal(main, ctx.chunk_sizes, opt.scan, config_.gdn_eps);
  } else if (ctx.mode == Context::Mode::kStreaming) {
    GdnStreamOutput r = GdnStreamChunk(main, cached ? cached->gdn : GdnState{}, opt.scan,
                                       config_.gdn_eps);
    main_out = r.out;
    if (saved) saved->gdn = std::move(r.state);
  } else {
    main_out = GdnBidirectional(main, opt.scan, config_.gdn_eps);
  }
  const at::Tensor main_raw = HeadsToTokens(main_out.to(h.scalar_type()));
  ctx.Tap(p + "main_raw", main_raw);

  at::Tensor combined = main_raw;
  if (ctx.camera) {
    // --- camera branch ---
    const std::vector<at::Tensor> cam = at::linear(h, w.cam_qkv_weight, w.cam_qkv_bias).chunk(3, -1);
    at::Tensor qc = cam[0], kc = cam[1], vc = cam[2];
    kc = short_conv(kc, w.conv_k_cam, &SanaBlockCache::conv_k_cam_tail);
    qc = RmsNorm(qc, w.q_norm_cam, config_.qk_norm_eps).reshape({b, n, heads, d}).relu();
    kc = RmsNorm(kc, w.k_norm_cam, config_.qk_norm_eps).reshape({b, n, heads, d}).relu().mul(
        key_scale);
    vc = vc.reshape({b, n, heads, d});
    qc = qc.permute({0, 2, 3, 1}).contiguous();  // (B, H, D, N)
    kc = kc.permute({0, 2, 3, 1}).contiguous();
    vc = vc.permute({0, 2, 3, 1}).contiguous();
    const at::Tensor pre_norm = at::linalg_vector_norm(kc, 2, {2}, true).clamp_min(1e-6);

    CamScanInputs scan;
    scan.q_rot = UcpeTransform(qc.transpose(-1, -2), ctx.ray_p_t, ctx.cam_rope, false)
                     .transpose(-1, -2);
    scan.k_rot = UcpeTransform(kc.transpose(-1, -2), ctx.ray_p_inv, ctx.cam_rope, false)
                     .transpose(-1, -2);
    scan.v = UcpeTransform(vc.transpose(-1, -2), ctx.ray_p_inv, ctx.cam_rope, false)
                 .transpose(-1, -2);
    if (opt.gdn_camera_downscale) {
      scan.q_rot = DownscaleToReferenceRms(qc, scan.q_rot);
      scan.k_rot = DownscaleToReferenceRms(kc, scan.k_rot);
      scan.v = DownscaleToReferenceRms(vc, scan.v);
    }
    // Dynamic beta discount: beta / max(1, mean over the frame of |k_post|^2 / |k_pre|^2).
    const at::Tensor post_norm = at::linalg_vector_norm(scan.k_rot, 2, {2}, true).clamp_min(1e-6);
    const at::Tensor inflation = post_norm.div(pre_norm).pow(2).view({b, heads, t, s}).mean({-1});
    scan.beta = gates.beta.div(inflation.unsqueeze(-1).clamp_min(1.0));
    scan.decay = gates.decay;
    if (ctx.tapping()) {
      ctx.Tap(p + "cam.in.q_rot", scan.q_rot);
      ctx.Tap(p + "cam.in.k_rot", scan.k_rot);
      ctx.Tap(p + "cam.in.v", scan.v);
      ctx.Tap(p + "cam.in.beta", scan.beta);
    }
    at::Tensor cam_out;  // (B, H, D, N) float32
    if (ctx.mode == Context::Mode::kChunkCausal) {
      cam_out = CamChunkCausal(scan, ctx.chunk_sizes, opt.scan);
    } else if (ctx.mode == Context::Mode::kStreaming) {
      CamStreamOutput r = CamStreamChunk(scan, cached ? cached->cam_kv : at::Tensor(), opt.scan);
      cam_out = r.out;
      if (saved) saved->cam_kv = std::move(r.state);
    } else {
      cam_out = CamBidirectional(scan, opt.scan);
    }
    ctx.Tap(p + "cam.out", cam_out);
    const at::Tensor restored =
        UcpeTransform(cam_out.to(h.scalar_type()).transpose(-1, -2), ctx.ray_p, ctx.cam_rope,
                      /*inverse_rope=*/true)
            .transpose(-1, -2);
    combined = AddCameraContribution(restored, w, p, ctx, combined);
  }

  return GatedOutput(h, w, p, ctx, combined);
}

// `_SoftmaxUCPESinglePathLiteLA.forward`: full bidirectional SDPA main branch
// (`_forward_softmax_attn`) + the softmax UCPE camera branch (`_forward_cam_branch_softmax`).
at::Tensor SanaTransformer::SoftmaxAttention(int index, const at::Tensor& h,
                                             const Context& ctx) const {
  const SanaBlockWeights& w = weights_.blocks[index];
  const SanaForwardOptions& opt = *ctx.options;
  const int64_t b = ctx.batch, n = ctx.tokens;
  const int64_t c = config_.hidden_size, heads = config_.num_heads(), d = config_.head_dim();
  const auto dtype = h.scalar_type();
  const std::string p = "block." + std::to_string(index) + ".";

  // --- main branch: RMSNorm'd, RoPE'd q/k, SDPA with scale 1/sqrt(D) ---
  const at::Tensor qkv = at::linear(h, w.qkv_weight).reshape({b, n, 3, heads, d});
  at::Tensor q = RmsNorm(qkv.select(2, 0).reshape({b, n, c}), w.q_norm, config_.qk_norm_eps)
                     .reshape({b, n, heads, d});
  at::Tensor k = RmsNorm(qkv.select(2, 1).reshape({b, n, c}), w.k_norm, config_.qk_norm_eps)
                     .reshape({b, n, heads, d});
  q = ApplyRopeHeadsFirst(q.permute({0, 2, 3, 1}), ctx.rope).permute({0, 3, 1, 2});
  k = ApplyRopeHeadsFirst(k.permute({0, 2, 3, 1}), ctx.rope).permute({0, 3, 1, 2});
  at::Tensor qs = q.transpose(1, 2), ks = k.transpose(1, 2), vs = qkv.select(2, 2).transpose(1, 2);
  const SanaBlockCache* cached = ctx.CachedBlock(index);
  SanaBlockCache* saved = ctx.SavedBlock(index);
  SanaBlockCache::ChunkKv* entry = nullptr;
  if (saved) {
    saved->kv.emplace_back();
    entry = &saved->kv.back();
    entry->chunk = ctx.chunk_index;
    entry->k = ks.clone(at::MemoryFormat::Contiguous);
    entry->v = vs.clone(at::MemoryFormat::Contiguous);
  }
  if (ctx.mode == Context::Mode::kStreaming && !ctx.cached_chunks.empty()) {
    std::vector<at::Tensor> kparts, vparts;
    for (const int64_t chunk : ctx.cached_chunks) {
      const SanaBlockCache::ChunkKv& e = CachedChunkKv(cached, chunk);
      kparts.push_back(e.k.to(ks.scalar_type()));
      vparts.push_back(e.v.to(vs.scalar_type()));
    }
    kparts.push_back(ks);
    vparts.push_back(vs);
    ks = at::cat(kparts, 2);
    vs = at::cat(vparts, 2);
  }
  if (opt.bf16_softmax && qs.scalar_type() == at::kFloat) {
    qs = qs.to(at::kBFloat16);
    ks = ks.to(at::kBFloat16);
    vs = vs.to(at::kBFloat16);
  }
  const at::Tensor main_mask = ctx.mode == Context::Mode::kChunkCausal
                                   ? ctx.chunk_mask.to(qs.scalar_type())
                                   : at::Tensor();
  at::Tensor combined =
      ScaledDotProductAttention(qs, ks, vs, main_mask).transpose(1, 2).reshape({b, n, c}).to(dtype);

  if (ctx.camera) {
    // --- camera branch: no short conv, no ReLU, no key scale ---
    const std::vector<at::Tensor> cam = at::linear(h, w.cam_qkv_weight, w.cam_qkv_bias).chunk(3, -1);
    const at::Tensor qc = RmsNorm(cam[0], w.q_norm_cam, config_.qk_norm_eps)
                              .reshape({b, n, heads, d})
                              .permute({0, 2, 3, 1})
                              .contiguous();  // (B, H, D, N)
    const at::Tensor kc = RmsNorm(cam[1], w.k_norm_cam, config_.qk_norm_eps)
                              .reshape({b, n, heads, d})
                              .permute({0, 2, 3, 1})
                              .contiguous();
    const at::Tensor vc = cam[2].reshape({b, n, heads, d}).permute({0, 2, 3, 1}).contiguous();
    at::Tensor qt = UcpeTransform(qc.transpose(-1, -2), ctx.ray_p_t, ctx.cam_rope, false)
                        .transpose(-1, -2);
    at::Tensor kt = UcpeTransform(kc.transpose(-1, -2), ctx.ray_p_inv, ctx.cam_rope, false)
                        .transpose(-1, -2);
    at::Tensor vt = UcpeTransform(vc.transpose(-1, -2), ctx.ray_p_inv, ctx.cam_rope, false)
                        .transpose(-1, -2);
    if (opt.softmax_camera_downscale) {
      qt = DownscaleToReferenceRms(qc, qt);
      kt = DownscaleToReferenceRms(kc, kt);
      vt = DownscaleToReferenceRms(vc, vt);
    }
    // fp32_attention: SDPA in float32 (bfloat16 with bf16_softmax).
    const auto sdpa_dtype = opt.bf16_softmax ? at::kBFloat16 : at::kFloat;
    at::Tensor kq = kt.transpose(-1, -2), vq = vt.transpose(-1, -2);  // (B, H, N, D)
    if (entry) {
      entry->cam_k = kq.clone(at::MemoryFormat::Contiguous);
      entry->cam_v = vq.clone(at::MemoryFormat::Contiguous);
    }
    if (ctx.mode == Context::Mode::kStreaming && !ctx.cached_chunks.empty()) {
      std::vector<at::Tensor> kparts, vparts;
      for (const int64_t chunk : ctx.cached_chunks) {
        const SanaBlockCache::ChunkKv& e = CachedChunkKv(cached, chunk);
        if (!e.cam_k.defined()) {
          throw std::runtime_error("SanaTransformer::ForwardChunk: the cache holds no camera "
                                   "K/V (saved without camera inputs)");
        }
        kparts.push_back(e.cam_k.to(kq.scalar_type()));
        vparts.push_back(e.cam_v.to(vq.scalar_type()));
      }
      kparts.push_back(kq);
      vparts.push_back(vq);
      kq = at::cat(kparts, 2);
      vq = at::cat(vparts, 2);
    }
    const at::Tensor cam_mask = ctx.mode == Context::Mode::kChunkCausal
                                    ? ctx.chunk_mask.to(sdpa_dtype)
                                    : at::Tensor();
    const at::Tensor out = CameraSoftmaxAttention(qt.transpose(-1, -2).to(sdpa_dtype),
                                                  kq.to(sdpa_dtype), vq.to(sdpa_dtype), cam_mask,
                                                  opt.camera_softmax_padded_scale);
    const at::Tensor restored =
        UcpeTransform(out.to(dtype), ctx.ray_p, ctx.cam_rope, /*inverse_rope=*/true)
            .transpose(-1, -2);
    combined = AddCameraContribution(restored, w, p, ctx, combined);
  }

  return GatedOutput(h, w, p, ctx, combined);
}

// `MultiHeadCrossAttention.forward` (SDPA path): query = the raw residual stream, RMSNorm'd q/k
// (eps 1e-6), additive text-mask bias, scale 1/sqrt(C/heads).
at::Tensor SanaTransformer::CrossAttention(int index, const at::Tensor& x,
                                           const Context& ctx) const {
  const SanaBlockWeights& w = weights_.blocks[index];
  const int64_t b = ctx.batch, n = ctx.tokens, c = config_.hidden_size;
  const int64_t heads = config_.num_attention_heads, hd = config_.cross_head_dim();
  const double eps = config_.cross_norm_eps;
  const at::Tensor q = RmsNorm(at::linear(x, w.cross_q_weight, w.cross_q_bias), w.cross_q_norm, eps)
                           .view({b, -1, heads, hd})
                           .transpose(1, 2);
  const at::Tensor kv = at::linear(ctx.y, w.cross_kv_weight, w.cross_kv_bias).view({b, -1, 2, c});
  const at::Tensor k =
      RmsNorm(kv.select(2, 0), w.cross_k_norm, eps).view({b, -1, heads, hd}).transpose(1, 2);
  const at::Tensor v = kv.select(2, 1).reshape({b, -1, heads, hd}).transpose(1, 2);
  const at::Tensor out = ScaledDotProductAttention(q, k, v, ctx.text_mask_bias);
  return at::linear(out.transpose(1, 2).reshape({b, n, c}), w.cross_proj_weight,
                    w.cross_proj_bias);
}

// `GLUMBConvTemp.forward`: per frame 1x1 conv (C -> 2F) + SiLU, depthwise 3x3, GLU with SiLU,
// 1x1 conv (F -> C, no bias); then the temporal residual x + t_conv(x) over (T, 1) kernels.
at::Tensor SanaTransformer::Ffn(int index, const at::Tensor& h, const Context& ctx) const {
  const SanaBlockWeights& w = weights_.blocks[index];
  const int64_t b = ctx.batch, t = ctx.frames, hh = ctx.height, ww = ctx.width;
  const int64_t c = config_.hidden_size, n = ctx.tokens;
  const int64_t wide = w.inverted_conv_weight.size(0);  // 2F
  const int64_t dw_pad = w.depth_conv_weight.size(-1) / 2;
  const at::Tensor frames = h.reshape({b * t, hh, ww, c}).permute({0, 3, 1, 2});  // (BT, C, H, W)

  auto spatial = [&](const at::Tensor& in) {
    at::Tensor y = at::silu(at::conv2d(in, w.inverted_conv_weight, w.inverted_conv_bias));
    y = at::conv2d(y, w.depth_conv_weight, w.depth_conv_bias, /*stride=*/1, /*padding=*/dw_pad,
                   /*dilation=*/1, /*groups=*/wide);
    const std::vector<at::Tensor> ag = y.chunk(2, 1);
    return at::conv2d(ag[0].mul(at::silu(ag[1])), w.point_conv_weight);
  };
  // The reference splits the frames so that one conv call stays below 2^30 elements (32-bit
  // indexing); the result is the same.
  constexpr int64_t kMaxConvElements = int64_t{1} << 30;
  const int64_t max_frames = std::max<int64_t>(1, kMaxConvElements / (wide * hh * ww));
  at::Tensor y;
  if (b * t <= max_frames) {
    y = spatial(frames);
  } else {
    std::vector<at::Tensor> parts;
    for (int64_t start = 0; start < b * t; start += max_frames) {
      parts.push_back(spatial(frames.narrow(0, start, std::min(max_frames, b * t - start))));
    }
    y = at::cat(parts, 0);
  }
  const at::Tensor seq = y.reshape({b, t, c, hh * ww}).permute({0, 2, 1, 3});  // (B, C, T, HW)
  const int64_t t_pad = w.t_conv_weight.size(2) / 2;
  at::Tensor out;
  if (ctx.mode == Context::Mode::kChunkCausal) {
    // Per chunk: the previous frames of the sequence on the left, zeros on the right.
    std::vector<at::Tensor> parts;
    int64_t start = 0;
    for (const int64_t len : ctx.chunk_sizes) {
      const int64_t f = std::min(t_pad, start);
      const at::Tensor left =
          LeftContext(f > 0 ? seq.narrow(2, start - f, f) : at::Tensor(), seq, t_pad);
      parts.push_back(TConvChunk(seq.narrow(2, start, len), w.t_conv_weight, left, t_pad));
      start += len;
    }
    out = at::cat(parts, 2);
  } else if (ctx.mode == Context::Mode::kStreaming) {
    const SanaBlockCache* cached = ctx.CachedBlock(index);
    const at::Tensor tail = cached ? cached->ffn_tail : at::Tensor();
    out = TConvChunk(seq, w.t_conv_weight, LeftContext(tail, seq, t_pad), t_pad);
    if (SanaBlockCache* saved = ctx.SavedBlock(index)) {
      at::Tensor all = tail.defined() ? at::cat({tail.to(seq.scalar_type()), seq}, 2) : seq;
      const int64_t keep = std::min<int64_t>(t_pad, all.size(2));
      saved->ffn_tail = all.narrow(2, all.size(2) - keep, keep).clone(at::MemoryFormat::Contiguous);
    }
  } else {
    out = seq.add(at::conv2d(seq, w.t_conv_weight, {}, /*stride=*/1, /*padding=*/{t_pad, 0}));
  }
  return out.permute({0, 2, 3, 1}).reshape({b, n, c});
}

}  // namespace wmserve::worker::sana
