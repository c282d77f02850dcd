// Frame-wise Gated DeltaNet scans (see gdn.h for the math and the layout).
//
// Internally every scan works on "framed" float32 views (BH, T, D, S) of the reference layout
// (B, H, D, T*S), with batch and heads merged so that the state update is one batched GEMM
// (baddbmm) per frame. Outputs are written in place into (BH, D, T, S) buffers, which are the
// reference layout already, so no output permute/copy is needed at the end.
#include "worker/models/sana/gdn.h"

#include <ATen/ops/baddbmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/softplus.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace wmserve::worker::sana {
namespace {

[[noreturn]] void Fail(const char* fn, const std::string& message) {
  throw std::runtime_error(std::string(fn) + ": " + message);
}

std::string ShapeString(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::ostringstream os;
  os << '[';
  for (int64_t i = 0; i < t.dim(); ++i) os << (i ? ", " : "") << t.size(i);
  os << ']';
  return os.str();
}

std::string ShapeString(std::initializer_list<int64_t> dims) {
  std::ostringstream os;
  os << '[';
  bool first = true;
  for (int64_t d : dims) {
    os << (first ? "" : ", ") << d;
    first = false;
  }
  os << ']';
  return os.str();
}

void CheckDefinedFloat(const char* fn, const char* name, const at::Tensor& t) {
  if (!t.defined()) Fail(fn, std::string(name) + " is undefined");
  if (!c10::isFloatingType(t.scalar_type())) {
    Fail(fn, std::string(name) + " has dtype " + c10::toString(t.scalar_type()) +
                 ", expected a floating-point dtype");
  }
}

void CheckShape(const char* fn, const char* name, const at::Tensor& t,
                std::initializer_list<int64_t> expected, const char* meaning) {
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  if (ok) {
    int64_t i = 0;
    for (int64_t d : expected) ok = ok && t.size(i++) == d;
  }
  if (!ok) {
    Fail(fn, std::string(name) + " has shape " + ShapeString(t) + ", expected " +
                 ShapeString(expected) + " " + meaning);
  }
}

void CheckSameDevice(const char* fn, const char* name, const at::Tensor& t,
                     const at::Tensor& reference) {
  if (t.device() != reference.device()) {
    Fail(fn, std::string(name) + " is on " + t.device().str() + " but q_rot is on " +
                 reference.device().str() + "; all scan tensors must share one device");
  }
}

struct Dims {
  int64_t B = 0, H = 0, Dk = 0, Dv = 0, T = 0, S = 0;
  int64_t BH() const { return B * H; }
  int64_t N() const { return T * S; }
};

// Validates one scan's tensors. `q`/`k` are null for the camera (numerator-only) scan.
Dims CheckScanInputs(const char* fn, const at::Tensor* q, const at::Tensor* k, const at::Tensor& v,
                     const at::Tensor& q_rot, const at::Tensor& k_rot, const at::Tensor& beta,
                     const at::Tensor& decay) {
  CheckDefinedFloat(fn, "q_rot", q_rot);
  CheckDefinedFloat(fn, "k_rot", k_rot);
  CheckDefinedFloat(fn, "v", v);
  CheckDefinedFloat(fn, "beta", beta);
  CheckDefinedFloat(fn, "decay", decay);
  if (q) CheckDefinedFloat(fn, "q", *q);
  if (k) CheckDefinedFloat(fn, "k", *k);

  if (q_rot.dim() != 4) {
    Fail(fn, "q_rot has shape " + ShapeString(q_rot) + ", expected (B, H, Dk, N)");
  }
  Dims d;
  d.B = q_rot.size(0);
  d.H = q_rot.size(1);
  d.Dk = q_rot.size(2);
  const int64_t n = q_rot.size(3);
  if (d.B < 1 || d.H < 1 || d.Dk < 1 || n < 1) {
    Fail(fn, "q_rot has shape " + ShapeString(q_rot) + "; every dimension must be >= 1");
  }
  const char* kSameAsQRot = "(the shape of q_rot, (B, H, Dk, N))";
  CheckShape(fn, "k_rot", k_rot, {d.B, d.H, d.Dk, n}, kSameAsQRot);
  if (q) CheckShape(fn, "q", *q, {d.B, d.H, d.Dk, n}, kSameAsQRot);
  if (k) CheckShape(fn, "k", *k, {d.B, d.H, d.Dk, n}, kSameAsQRot);
  if (v.dim() != 4 || v.size(0) != d.B || v.size(1) != d.H || v.size(3) != n || v.size(2) < 1) {
    Fail(fn, "v has shape " + ShapeString(v) + ", expected (B, H, Dv, N) = [" +
                 std::to_string(d.B) + ", " + std::to_string(d.H) + ", Dv, " + std::to_string(n) +
                 "]");
  }
  d.Dv = v.size(2);

  if (decay.dim() != 3 || decay.size(0) != d.B || decay.size(1) != d.H || decay.size(2) < 1) {
    Fail(fn, "decay has shape " + ShapeString(decay) + ", expected (B, H, T) with B=" +
                 std::to_string(d.B) + ", H=" + std::to_string(d.H) + ", T >= 1");
  }
  d.T = decay.size(2);
  if (n % d.T != 0) {
    Fail(fn, "N=" + std::to_string(n) + " tokens is not divisible by T=" + std::to_string(d.T) +
                 " frames (T is taken from decay)");
  }
  d.S = n / d.T;
  if (beta.dim() == 4) {
    CheckShape(fn, "beta", beta, {d.B, d.H, d.T, d.S}, "(B, H, T, S), per token");
  } else if (beta.dim() == 3) {
    CheckShape(fn, "beta", beta, {d.B, d.H, d.T}, "(B, H, T), per frame");
  } else {
    Fail(fn, "beta has shape " + ShapeString(beta) + ", expected (B, H, T, S) = " +
                 ShapeString({d.B, d.H, d.T, d.S}) + " or (B, H, T) = " +
                 ShapeString({d.B, d.H, d.T}));
  }

  CheckSameDevice(fn, "k_rot", k_rot, q_rot);
  CheckSameDevice(fn, "v", v, q_rot);
  CheckSameDevice(fn, "beta", beta, q_rot);
  CheckSameDevice(fn, "decay", decay, q_rot);
  if (q) CheckSameDevice(fn, "q", *q, q_rot);
  if (k) CheckSameDevice(fn, "k", *k, q_rot);
  return d;
}

void CheckOptions(const char* fn, const GdnScanOptions& options) {
  switch (options.method) {
    case GdnScanMethod::kChunked:
      if (options.chunk_frames < 1) {
        Fail(fn, "options.chunk_frames=" + std::to_string(options.chunk_frames) +
                     " must be >= 1 for the chunked method");
      }
      return;
    case GdnScanMethod::kRecurrent:
      return;
  }
  Fail(fn, "options.method has an unknown value " +
               std::to_string(static_cast<int>(options.method)));
}

void CheckChunkSizes(const char* fn, const std::vector<int64_t>& chunk_sizes, int64_t frames) {
  if (chunk_sizes.empty()) Fail(fn, "chunk_sizes is empty");
  int64_t total = 0;
  for (size_t i = 0; i < chunk_sizes.size(); ++i) {
    if (chunk_sizes[i] < 1) {
      Fail(fn, "chunk_sizes[" + std::to_string(i) + "]=" + std::to_string(chunk_sizes[i]) +
                   " must be >= 1");
    }
    total += chunk_sizes[i];
  }
  if (total != frames) {
    Fail(fn, "chunk_sizes sum to " + std::to_string(total) + " frames but the inputs have T=" +
                 std::to_string(frames));
  }
}

// Float32 views of one scan's inputs, (BH, T, D, S); beta (BH, T, 1, S|1); decay (BH, T, 1, 1).
struct Framed {
  Dims d;
  bool with_den = false;
  at::Tensor q, k, v, q_rot, k_rot, beta, decay;
};

at::Tensor ToFramed(const at::Tensor& x, const Dims& d) {
  return x.to(at::kFloat).reshape({d.BH(), x.size(2), d.T, d.S}).permute({0, 2, 1, 3});
}

Framed Prepare(const Dims& d, const at::Tensor* q, const at::Tensor* k, const at::Tensor& v,
               const at::Tensor& q_rot, const at::Tensor& k_rot, const at::Tensor& beta,
               const at::Tensor& decay) {
  Framed f;
  f.d = d;
  f.with_den = q != nullptr;
  if (q) f.q = ToFramed(*q, d);
  if (k) f.k = ToFramed(*k, d);
  f.v = ToFramed(v, d);
  f.q_rot = ToFramed(q_rot, d);
  f.k_rot = ToFramed(k_rot, d);
  const int64_t beta_tokens = beta.dim() == 4 ? d.S : 1;
  f.beta = beta.to(at::kFloat).reshape({d.BH(), d.T, 1, beta_tokens});
  f.decay = decay.to(at::kFloat).reshape({d.BH(), d.T, 1, 1});
  return f;
}

// Frames [t0, t0 + len) of a framed input.
Framed Narrow(const Framed& f, int64_t t0, int64_t len) {
  Framed out = f;
  out.d.T = len;
  auto narrow = [&](const at::Tensor& x) { return x.defined() ? x.narrow(1, t0, len) : x; };
  out.q = narrow(f.q);
  out.k = narrow(f.k);
  out.v = narrow(f.v);
  out.q_rot = narrow(f.q_rot);
  out.k_rot = narrow(f.k_rot);
  out.beta = narrow(f.beta);
  out.decay = narrow(f.decay);
  return out;
}

// Running state, (BH, Dv, Dk) and (BH, Dk, 1).
struct Carry {
  at::Tensor kv;
  at::Tensor z;
};

Carry ZeroCarry(const Framed& f) {
  const auto opts = f.v.options();
  Carry c;
  c.kv = at::zeros({f.d.BH(), f.d.Dv, f.d.Dk}, opts);
  if (f.with_den) c.z = at::zeros({f.d.BH(), f.d.Dk, 1}, opts);
  return c;
}

// Output buffers in the reference layout, (BH, Dv, T, S) and (BH, 1, T, S).
struct Outputs {
  at::Tensor num;
  at::Tensor den;
  Outputs Narrow(int64_t t0, int64_t len) const {
    return {num.narrow(2, t0, len), den.defined() ? den.narrow(2, t0, len) : den};
  }
  // (BH, T, D, S) views for writing frame blocks.
  at::Tensor NumFramed() const { return num.permute({0, 2, 1, 3}); }
  at::Tensor DenFramed() const { return den.permute({0, 2, 1, 3}); }
};

Outputs AllocOutputs(const Framed& f) {
  const auto opts = f.v.options();
  Outputs o;
  o.num = at::empty({f.d.BH(), f.d.Dv, f.d.T, f.d.S}, opts);
  if (f.with_den) o.den = at::empty({f.d.BH(), 1, f.d.T, f.d.S}, opts);
  return o;
}

// Per-frame transitions and inputs of a range of frames, computed in parallel over the frames:
//   W = gamma (I - K~ diag(beta) K~^T) (BH, L, Dk, Dk),  U = V diag(beta) K~^T (BH, L, Dv, Dk),
//   and for z: W^z = gamma (I - K diag(beta) K^T), u^z = K beta (BH, L, Dk, 1).
// They do not depend on the scan direction.
struct Transitions {
  at::Tensor w_kv, u_kv, w_z, u_z;
};

Transitions ComputeTransitions(const Framed& c) {
  const at::Tensor eye = at::eye(c.d.Dk, c.v.options());
  const at::Tensor k_rot_t = c.k_rot.transpose(-1, -2);
  Transitions tr;
  tr.w_kv = c.decay.mul(eye.sub(at::matmul(c.k_rot.mul(c.beta), k_rot_t)));
  tr.u_kv = at::matmul(c.v.mul(c.beta), k_rot_t);
  if (c.with_den) {
    const at::Tensor k_beta = c.k.mul(c.beta);
    tr.w_z = c.decay.mul(eye.sub(at::matmul(k_beta, c.k.transpose(-1, -2))));
    tr.u_z = k_beta.sum(-1, /*keepdim=*/true);
  }
  return tr;
}

// Scans the frames of `c` through their transitions and reads all outputs out at once.
// Forward (reverse=false): inclusive, frames ascending, frame t reads the state after frame t.
// Reverse: exclusive, frames descending, frame t reads the state before frame t is absorbed
// (i.e. built from the frames after t). `out` covers exactly the frames of `c`.
void ScanThrough(const Framed& c, const Transitions& tr, bool reverse, Carry& carry,
                 const Outputs& out) {
  const int64_t len = c.d.T;
  // Sequential D x D scan: S <- S W_t + U_t,  z <- W^z_t z + u^z_t.
  std::vector<at::Tensor> kv_states(static_cast<size_t>(len));
  std::vector<at::Tensor> z_states(c.with_den ? static_cast<size_t>(len) : 0);
  for (int64_t j = 0; j < len; ++j) {
    const int64_t t = reverse ? len - 1 - j : j;
    const size_t slot = static_cast<size_t>(t);
    if (reverse) {
      kv_states[slot] = carry.kv;
      if (c.with_den) z_states[slot] = carry.z;
    }
    carry.kv = at::baddbmm(tr.u_kv.select(1, t), carry.kv, tr.w_kv.select(1, t));
    if (c.with_den) carry.z = at::baddbmm(tr.u_z.select(1, t), tr.w_z.select(1, t), carry.z);
    if (!reverse) {
      kv_states[slot] = carry.kv;
      if (c.with_den) z_states[slot] = carry.z;
    }
  }
  // Readout of all frames at once: num = S Q~, den = z^T Q.
  out.NumFramed().copy_(at::matmul(at::stack(kv_states, 1), c.q_rot));
  if (c.with_den) {
    out.DenFramed().copy_(at::matmul(at::stack(z_states, 1).transpose(-1, -2), c.q));
  }
}

// The reference's chunked algorithm over all frames of `f`, `chunk_frames` frames at a time
// (chunks visited in scan order, the state carried between them).
void ScanChunked(const Framed& f, bool reverse, int64_t chunk_frames, Carry& carry,
                 const Outputs& out) {
  const int64_t num_chunks = (f.d.T + chunk_frames - 1) / chunk_frames;
  for (int64_t i = 0; i < num_chunks; ++i) {
    const int64_t t0 = (reverse ? num_chunks - 1 - i : i) * chunk_frames;
    const int64_t len = std::min(chunk_frames, f.d.T - t0);
    const Framed c = Narrow(f, t0, len);
    ScanThrough(c, ComputeTransitions(c), reverse, carry, out.Narrow(t0, len));
  }
}

// The frame-by-frame recurrence in the spec's step form.
void ScanRecurrent(const Framed& f, bool reverse, Carry& carry, const Outputs& out) {
  const int64_t T = f.d.T;
  const at::Tensor num_framed = out.NumFramed();
  const at::Tensor den_framed = f.with_den ? out.DenFramed() : at::Tensor();
  auto read_out = [&](int64_t t) {
    num_framed.select(1, t).copy_(at::matmul(carry.kv, f.q_rot.select(1, t)));
    if (f.with_den) {
      den_framed.select(1, t).copy_(at::matmul(carry.z.transpose(-1, -2), f.q.select(1, t)));
    }
  };
  for (int64_t j = 0; j < T; ++j) {
    const int64_t t = reverse ? T - 1 - j : j;
    if (reverse) read_out(t);
    const at::Tensor gamma = f.decay.select(1, t);  // (BH, 1, 1)
    const at::Tensor beta = f.beta.select(1, t);    // (BH, 1, S|1)
    const at::Tensor k_rot = f.k_rot.select(1, t);  // (BH, Dk, S)
    // S <- gamma S;  S <- S + (V - S K~) diag(beta) K~^T
    at::Tensor kv = carry.kv.mul(gamma);
    const at::Tensor delta = f.v.select(1, t).sub(at::matmul(kv, k_rot)).mul(beta);
    carry.kv = kv.add(at::matmul(delta, k_rot.transpose(-1, -2)));
    if (f.with_den) {
      // z <- gamma z;  z <- z + K diag(beta) (1 - K^T z)
      const at::Tensor k = f.k.select(1, t);  // (BH, Dk, S)
      at::Tensor z = carry.z.mul(gamma);
      const at::Tensor residual = at::matmul(k.transpose(-1, -2), z).neg().add(1.0);  // (BH, S, 1)
      carry.z = z.add(at::matmul(k.mul(beta), residual));
    }
    if (!reverse) read_out(t);
  }
}

void Scan(const Framed& f, bool reverse, const GdnScanOptions& options, Carry& carry,
          const Outputs& out) {
  if (options.method == GdnScanMethod::kRecurrent) {
    ScanRecurrent(f, reverse, carry, out);
  } else {
    ScanChunked(f, reverse, options.chunk_frames, carry, out);
  }
}

// Forward scan of all frames of `f` from `carry` (left holding the final forward state) plus the
// backward scan from zero, into `fwd` and `bwd`. When the frames fit in one scan chunk, the
// chunked method computes their transitions once for both directions.
void ScanBothDirections(const Framed& f, const GdnScanOptions& options, Carry& carry,
                        const Outputs& fwd, const Outputs& bwd) {
  Carry backward = ZeroCarry(f);
  if (options.method == GdnScanMethod::kChunked && f.d.T <= options.chunk_frames) {
    const Transitions tr = ComputeTransitions(f);
    ScanThrough(f, tr, /*reverse=*/false, carry, fwd);
    ScanThrough(f, tr, /*reverse=*/true, backward, bwd);
    return;
  }
  Scan(f, /*reverse=*/false, options, carry, fwd);
  Scan(f, /*reverse=*/true, options, backward, bwd);
}

// Validates a carried state against the inputs and returns it as (BH, Dv, Dk) / (BH, Dk, 1).
Carry CarryFromState(const char* fn, const Framed& f, const at::Tensor& kv, const at::Tensor* z,
                     const at::Tensor& device_ref) {
  const bool any = kv.defined() || (z && z->defined());
  if (!any) return ZeroCarry(f);
  const Dims& d = f.d;
  CheckDefinedFloat(fn, z ? "state.kv" : "initial_kv", kv);
  CheckShape(fn, z ? "state.kv" : "initial_kv", kv, {d.B, d.H, d.Dv, d.Dk}, "(B, H, Dv, Dk)");
  CheckSameDevice(fn, z ? "state.kv" : "initial_kv", kv, device_ref);
  Carry c;
  c.kv = kv.to(at::kFloat).reshape({d.BH(), d.Dv, d.Dk});
  if (z) {
    CheckDefinedFloat(fn, "state.z", *z);
    CheckShape(fn, "state.z", *z, {d.B, d.H, d.Dk, 1}, "(B, H, Dk, 1)");
    CheckSameDevice(fn, "state.z", *z, device_ref);
    c.z = z->to(at::kFloat).reshape({d.BH(), d.Dk, 1});
  }
  return c;
}

Dims CheckGdn(const char* fn, const GdnScanInputs& in, const GdnScanOptions& options) {
  CheckOptions(fn, options);
  return CheckScanInputs(fn, &in.q, &in.k, in.v, in.q_rot, in.k_rot, in.beta, in.decay);
}

Dims CheckCam(const char* fn, const CamScanInputs& in, const GdnScanOptions& options) {
  CheckOptions(fn, options);
  return CheckScanInputs(fn, nullptr, nullptr, in.v, in.q_rot, in.k_rot, in.beta, in.decay);
}

Framed PrepareGdn(const Dims& d, const GdnScanInputs& in) {
  return Prepare(d, &in.q, &in.k, in.v, in.q_rot, in.k_rot, in.beta, in.decay);
}

Framed PrepareCam(const Dims& d, const CamScanInputs& in) {
  return Prepare(d, nullptr, nullptr, in.v, in.q_rot, in.k_rot, in.beta, in.decay);
}

GdnComponents ToComponents(const Outputs& o, const Dims& d) {
  return {o.num.view({d.B, d.H, d.Dv, d.N()}), o.den.view({d.B, d.H, 1, d.N()})};
}

// The chunk-causal composition: per AR chunk, the forward scan continues from the carried state
// and the backward scan restarts from zero inside the chunk (exactly a sequence of stream steps).
void ChunkCausalScan(const Framed& f, const std::vector<int64_t>& chunk_sizes,
                     const GdnScanOptions& options, const Outputs& fwd, const Outputs& bwd) {
  Carry carry = ZeroCarry(f);
  int64_t t0 = 0;
  for (int64_t len : chunk_sizes) {
    ScanBothDirections(Narrow(f, t0, len), options, carry, fwd.Narrow(t0, len),
                       bwd.Narrow(t0, len));
    t0 += len;
  }
}

at::Tensor Combine(const Outputs& fwd, const Outputs& bwd, double eps) {
  return fwd.num.add(bwd.num).div(fwd.den.add(bwd.den).add(eps));
}

// Flip along `dim`, shift by one step and fill the head with `fill`.
at::Tensor FlipShift(const at::Tensor& x, int64_t dim, double fill) {
  const at::Tensor flipped = x.flip({dim});
  std::vector<int64_t> pad_shape(x.sizes().begin(), x.sizes().end());
  pad_shape[static_cast<size_t>(dim)] = 1;
  return at::cat({at::full(pad_shape, fill, x.options()), flipped.narrow(dim, 0, x.size(dim) - 1)},
                 dim);
}

// FlipShift of a (B, H, D, T*S) tensor over its frames.
at::Tensor FlipShiftTokens(const at::Tensor& x, const Dims& d) {
  const int64_t dim = x.size(2);
  return FlipShift(x.reshape({d.B, d.H, dim, d.T, d.S}), 3, 0.0).reshape({d.B, d.H, dim, d.N()});
}

at::Tensor FlipTokens(const at::Tensor& x, const Dims& d) {
  const int64_t dim = x.size(2);
  return x.reshape({d.B, d.H, dim, d.T, d.S}).flip({3}).reshape({d.B, d.H, dim, d.N()});
}

at::Tensor NarrowTokens(const at::Tensor& x, const Dims& d, int64_t t0, int64_t t1) {
  return x.narrow(3, t0 * d.S, (t1 - t0) * d.S);
}

void CheckFrameRange(const char* fn, const Dims& d, int64_t t0, int64_t t1) {
  if (t0 < 0 || t1 > d.T || t0 >= t1) {
    Fail(fn, "frame range [" + std::to_string(t0) + ", " + std::to_string(t1) +
                 ") is empty or outside [0, " + std::to_string(d.T) + ")");
  }
}

}  // namespace

double GdnKeyScale(int64_t head_dim, int64_t tokens_per_frame) {
  if (head_dim < 1 || tokens_per_frame < 1) {
    Fail("GdnKeyScale", "head_dim=" + std::to_string(head_dim) + " and tokens_per_frame=" +
                            std::to_string(tokens_per_frame) + " must both be >= 1");
  }
  return 1.0 / std::sqrt(static_cast<double>(head_dim)) /
         std::sqrt(static_cast<double>(tokens_per_frame));
}

// ---------------------------------------------------------------------------------------------
// Main branch.

GdnComponents GdnForwardScan(const GdnScanInputs& in, const GdnScanOptions& options,
                             const GdnState& initial, GdnState* final_state) {
  constexpr const char* kFn = "GdnForwardScan";
  const Dims d = CheckGdn(kFn, in, options);
  const Framed f = PrepareGdn(d, in);
  Carry carry = CarryFromState(kFn, f, initial.kv, &initial.z, in.q_rot);
  const Outputs out = AllocOutputs(f);
  Scan(f, /*reverse=*/false, options, carry, out);
  if (final_state) {
    final_state->kv = carry.kv.view({d.B, d.H, d.Dv, d.Dk});
    final_state->z = carry.z.view({d.B, d.H, d.Dk, 1});
  }
  return ToComponents(out, d);
}

GdnComponents GdnBackwardScan(const GdnScanInputs& in, const GdnScanOptions& options) {
  const Dims d = CheckGdn("GdnBackwardScan", in, options);
  const Framed f = PrepareGdn(d, in);
  Carry carry = ZeroCarry(f);
  const Outputs out = AllocOutputs(f);
  Scan(f, /*reverse=*/true, options, carry, out);
  return ToComponents(out, d);
}

at::Tensor GdnCombine(const GdnComponents& fwd, const GdnComponents& bwd, double eps) {
  constexpr const char* kFn = "GdnCombine";
  CheckDefinedFloat(kFn, "fwd.num", fwd.num);
  CheckDefinedFloat(kFn, "fwd.den", fwd.den);
  CheckDefinedFloat(kFn, "bwd.num", bwd.num);
  CheckDefinedFloat(kFn, "bwd.den", bwd.den);
  if (fwd.num.dim() != 4) {
    Fail(kFn, "fwd.num has shape " + ShapeString(fwd.num) + ", expected (B, H, Dv, N)");
  }
  const int64_t b = fwd.num.size(0), h = fwd.num.size(1), n = fwd.num.size(3);
  CheckShape(kFn, "bwd.num", bwd.num, {b, h, fwd.num.size(2), n}, "(the shape of fwd.num)");
  CheckShape(kFn, "fwd.den", fwd.den, {b, h, 1, n}, "(B, H, 1, N)");
  CheckShape(kFn, "bwd.den", bwd.den, {b, h, 1, n}, "(B, H, 1, N)");
  return fwd.num.to(at::kFloat)
      .add(bwd.num.to(at::kFloat))
      .div(fwd.den.to(at::kFloat).add(bwd.den.to(at::kFloat)).add(eps));
}

at::Tensor GdnBidirectional(const GdnScanInputs& in, const GdnScanOptions& options, double eps) {
  const Dims d = CheckGdn("GdnBidirectional", in, options);
  const Framed f = PrepareGdn(d, in);
  const Outputs fwd = AllocOutputs(f), bwd = AllocOutputs(f);
  Carry carry = ZeroCarry(f);
  ScanBothDirections(f, options, carry, fwd, bwd);
  return Combine(fwd, bwd, eps).view({d.B, d.H, d.Dv, d.N()});
}

at::Tensor GdnChunkCausal(const GdnScanInputs& in, const std::vector<int64_t>& chunk_sizes,
                          const GdnScanOptions& options, double eps) {
  constexpr const char* kFn = "GdnChunkCausal";
  const Dims d = CheckGdn(kFn, in, options);
  CheckChunkSizes(kFn, chunk_sizes, d.T);
  const Framed f = PrepareGdn(d, in);
  const Outputs fwd = AllocOutputs(f), bwd = AllocOutputs(f);
  ChunkCausalScan(f, chunk_sizes, options, fwd, bwd);
  return Combine(fwd, bwd, eps).view({d.B, d.H, d.Dv, d.N()});
}

GdnStreamOutput GdnStreamChunk(const GdnScanInputs& in, const GdnState& carried,
                               const GdnScanOptions& options, double eps) {
  constexpr const char* kFn = "GdnStreamChunk";
  const Dims d = CheckGdn(kFn, in, options);
  const Framed f = PrepareGdn(d, in);
  const Outputs fwd = AllocOutputs(f), bwd = AllocOutputs(f);
  Carry carry = CarryFromState(kFn, f, carried.kv, &carried.z, in.q_rot);
  ScanBothDirections(f, options, carry, fwd, bwd);
  GdnStreamOutput result;
  result.state.kv = carry.kv.view({d.B, d.H, d.Dv, d.Dk});
  result.state.z = carry.z.view({d.B, d.H, d.Dk, 1});
  result.out = Combine(fwd, bwd, eps).view({d.B, d.H, d.Dv, d.N()});
  return result;
}

// ---------------------------------------------------------------------------------------------
// Camera branch.

at::Tensor CamForwardScan(const CamScanInputs& in, const GdnScanOptions& options,
                          const at::Tensor& initial_kv, at::Tensor* final_kv) {
  constexpr const char* kFn = "CamForwardScan";
  const Dims d = CheckCam(kFn, in, options);
  const Framed f = PrepareCam(d, in);
  Carry carry = CarryFromState(kFn, f, initial_kv, nullptr, in.q_rot);
  const Outputs out = AllocOutputs(f);
  Scan(f, /*reverse=*/false, options, carry, out);
  if (final_kv) *final_kv = carry.kv.view({d.B, d.H, d.Dv, d.Dk});
  return out.num.view({d.B, d.H, d.Dv, d.N()});
}

at::Tensor CamBackwardScan(const CamScanInputs& in, const GdnScanOptions& options) {
  const Dims d = CheckCam("CamBackwardScan", in, options);
  const Framed f = PrepareCam(d, in);
  Carry carry = ZeroCarry(f);
  const Outputs out = AllocOutputs(f);
  Scan(f, /*reverse=*/true, options, carry, out);
  return out.num.view({d.B, d.H, d.Dv, d.N()});
}

at::Tensor CamBidirectional(const CamScanInputs& in, const GdnScanOptions& options) {
  const Dims d = CheckCam("CamBidirectional", in, options);
  const Framed f = PrepareCam(d, in);
  const Outputs fwd = AllocOutputs(f), bwd = AllocOutputs(f);
  Carry carry = ZeroCarry(f);
  ScanBothDirections(f, options, carry, fwd, bwd);
  return fwd.num.add(bwd.num).view({d.B, d.H, d.Dv, d.N()});
}

at::Tensor CamChunkCausal(const CamScanInputs& in, const std::vector<int64_t>& chunk_sizes,
                          const GdnScanOptions& options) {
  constexpr const char* kFn = "CamChunkCausal";
  const Dims d = CheckCam(kFn, in, options);
  CheckChunkSizes(kFn, chunk_sizes, d.T);
  const Framed f = PrepareCam(d, in);
  const Outputs fwd = AllocOutputs(f), bwd = AllocOutputs(f);
  ChunkCausalScan(f, chunk_sizes, options, fwd, bwd);
  return fwd.num.add(bwd.num).view({d.B, d.H, d.Dv, d.N()});
}

CamStreamOutput CamStreamChunk(const CamScanInputs& in, const at::Tensor& carried_kv,
                               const GdnScanOptions& options) {
  constexpr const char* kFn = "CamStreamChunk";
  const Dims d = CheckCam(kFn, in, options);
  const Framed f = PrepareCam(d, in);
  const Outputs fwd = AllocOutputs(f), bwd = AllocOutputs(f);
  Carry carry = CarryFromState(kFn, f, carried_kv, nullptr, in.q_rot);
  ScanBothDirections(f, options, carry, fwd, bwd);
  CamStreamOutput result;
  result.state = carry.kv.view({d.B, d.H, d.Dv, d.Dk});
  result.out = fwd.num.add(bwd.num).view({d.B, d.H, d.Dv, d.N()});
  return result;
}

// ---------------------------------------------------------------------------------------------
// Helpers.

GdnScanInputs SliceFrames(const GdnScanInputs& in, int64_t t0, int64_t t1) {
  constexpr const char* kFn = "SliceFrames";
  const Dims d = CheckScanInputs(kFn, &in.q, &in.k, in.v, in.q_rot, in.k_rot, in.beta, in.decay);
  CheckFrameRange(kFn, d, t0, t1);
  GdnScanInputs out;
  out.q = NarrowTokens(in.q, d, t0, t1);
  out.k = NarrowTokens(in.k, d, t0, t1);
  out.v = NarrowTokens(in.v, d, t0, t1);
  out.q_rot = NarrowTokens(in.q_rot, d, t0, t1);
  out.k_rot = NarrowTokens(in.k_rot, d, t0, t1);
  out.beta = in.beta.narrow(2, t0, t1 - t0);
  out.decay = in.decay.narrow(2, t0, t1 - t0);
  return out;
}

CamScanInputs SliceFrames(const CamScanInputs& in, int64_t t0, int64_t t1) {
  constexpr const char* kFn = "SliceFrames";
  const Dims d =
      CheckScanInputs(kFn, nullptr, nullptr, in.v, in.q_rot, in.k_rot, in.beta, in.decay);
  CheckFrameRange(kFn, d, t0, t1);
  CamScanInputs out;
  out.q_rot = NarrowTokens(in.q_rot, d, t0, t1);
  out.k_rot = NarrowTokens(in.k_rot, d, t0, t1);
  out.v = NarrowTokens(in.v, d, t0, t1);
  out.beta = in.beta.narrow(2, t0, t1 - t0);
  out.decay = in.decay.narrow(2, t0, t1 - t0);
  return out;
}

GdnScanInputs FlipShiftForBackward(const GdnScanInputs& in) {
  const Dims d = CheckScanInputs("FlipShiftForBackward", &in.q, &in.k, in.v, in.q_rot, in.k_rot,
                                 in.beta, in.decay);
  GdnScanInputs out;
  out.q = FlipTokens(in.q, d);
  out.q_rot = FlipTokens(in.q_rot, d);
  out.k = FlipShiftTokens(in.k, d);
  out.k_rot = FlipShiftTokens(in.k_rot, d);
  out.v = FlipShiftTokens(in.v, d);
  out.beta = FlipShift(in.beta, 2, 0.0);
  out.decay = FlipShift(in.decay, 2, 1.0);
  return out;
}

CamScanInputs FlipShiftForBackward(const CamScanInputs& in) {
  const Dims d = CheckScanInputs("FlipShiftForBackward", nullptr, nullptr, in.v, in.q_rot,
                                 in.k_rot, in.beta, in.decay);
  CamScanInputs out;
  out.q_rot = FlipTokens(in.q_rot, d);
  out.k_rot = FlipShiftTokens(in.k_rot, d);
  out.v = FlipShiftTokens(in.v, d);
  out.beta = FlipShift(in.beta, 2, 0.0);
  out.decay = FlipShift(in.decay, 2, 1.0);
  return out;
}

at::Tensor FlipFrames(const at::Tensor& x, int64_t frames) {
  constexpr const char* kFn = "FlipFrames";
  if (!x.defined()) Fail(kFn, "x is undefined");
  if (x.dim() != 4) Fail(kFn, "x has shape " + ShapeString(x) + ", expected (B, H, D, T*S)");
  if (frames < 1 || x.size(3) % frames != 0) {
    Fail(kFn, "N=" + std::to_string(x.size(3)) + " tokens is not a positive multiple of frames=" +
                  std::to_string(frames));
  }
  Dims d;
  d.B = x.size(0);
  d.H = x.size(1);
  d.T = frames;
  d.S = x.size(3) / frames;
  return FlipTokens(x, d);
}

FrameGates ComputeFrameGates(const at::Tensor& h, int64_t frames, int64_t tokens_per_frame,
                             const at::Tensor& beta_weight, const at::Tensor& beta_bias,
                             const at::Tensor& gate_weight, const at::Tensor& gate_bias,
                             const at::Tensor& a_log, const at::Tensor& dt_bias) {
  constexpr const char* kFn = "ComputeFrameGates";
  CheckDefinedFloat(kFn, "h", h);
  CheckDefinedFloat(kFn, "beta_weight", beta_weight);
  CheckDefinedFloat(kFn, "beta_bias", beta_bias);
  CheckDefinedFloat(kFn, "gate_weight", gate_weight);
  CheckDefinedFloat(kFn, "gate_bias", gate_bias);
  CheckDefinedFloat(kFn, "a_log", a_log);
  CheckDefinedFloat(kFn, "dt_bias", dt_bias);
  if (frames < 1 || tokens_per_frame < 1) {
    Fail(kFn, "frames=" + std::to_string(frames) + " and tokens_per_frame=" +
                  std::to_string(tokens_per_frame) + " must both be >= 1");
  }
  if (h.dim() != 3 || h.size(1) != frames * tokens_per_frame) {
    Fail(kFn, "h has shape " + ShapeString(h) + ", expected (B, N, C) with N = frames * " +
                  "tokens_per_frame = " + std::to_string(frames * tokens_per_frame));
  }
  const int64_t b = h.size(0), c = h.size(2);
  if (beta_weight.dim() != 2 || beta_weight.size(1) != c || beta_weight.size(0) < 1) {
    Fail(kFn, "beta_weight has shape " + ShapeString(beta_weight) + ", expected (H, C) with C=" +
                  std::to_string(c));
  }
  const int64_t heads = beta_weight.size(0);
  CheckShape(kFn, "gate_weight", gate_weight, {heads, c}, "(H, C), like beta_weight");
  CheckShape(kFn, "beta_bias", beta_bias, {heads}, "(H)");
  CheckShape(kFn, "gate_bias", gate_bias, {heads}, "(H)");
  CheckShape(kFn, "a_log", a_log, {heads}, "(H)");
  CheckShape(kFn, "dt_bias", dt_bias, {heads}, "(H)");
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"beta_weight", &beta_weight},
                                {"beta_bias", &beta_bias},
                                {"gate_weight", &gate_weight},
                                {"gate_bias", &gate_bias},
                                {"a_log", &a_log},
                                {"dt_bias", &dt_bias}}) {
    if (t->device() != h.device()) {
      Fail(kFn, std::string(name) + " is on " + t->device().str() + " but h is on " +
                    h.device().str());
    }
  }

  const at::Tensor x = h.to(at::kFloat);
  FrameGates gates;
  gates.beta = at::linear(x, beta_weight.to(at::kFloat), beta_bias.to(at::kFloat))
                   .sigmoid()
                   .reshape({b, frames, tokens_per_frame, heads})
                   .permute({0, 3, 1, 2})
                   .contiguous();
  const at::Tensor frame_mean = x.reshape({b, frames, tokens_per_frame, c}).mean({2});
  const at::Tensor a = at::linear(frame_mean, gate_weight.to(at::kFloat), gate_bias.to(at::kFloat));
  const at::Tensor rate = a_log.to(at::kFloat).exp().neg();
  gates.decay = rate.mul(at::softplus(a.add(dt_bias.to(at::kFloat))))
                    .exp()
                    .transpose(1, 2)
                    .contiguous();
  return gates;
}

}  // namespace wmserve::worker::sana
