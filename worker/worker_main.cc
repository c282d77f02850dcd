// wmserve-worker: loads a model on one device, dials the scheduler, runs rollouts it is given.
#include <malloc.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "server/cli_flags.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "worker/device_memory.h"
#include "worker/model_registry.h"
#include "worker/models/torch_runtime.h"
#include "worker/worker_agent.h"

ABSL_FLAG(std::string, config, "", "Config file of `flag = value` lines; flags override it.");
ABSL_FLAG(std::string, scheduler, "127.0.0.1:50051", "Scheduler address to dial (host:port).");
ABSL_FLAG(std::string, device, "cpu", "cpu | cuda:N");
ABSL_FLAG(std::string, name, "", "Worker name shown by `wmctl workers` (default: host-pid).");
ABSL_FLAG(std::string, model, "warp", "Model to serve (comma-separated for several).");
ABSL_FLAG(std::string, preset, "", "Model preset (model-specific).");
ABSL_FLAG(std::string, weights, "", "Model weights: a path, or `dummy` (model-specific).");
ABSL_FLAG(std::string, dtype, "", "fp32 | bf16 (model-specific).");
ABSL_FLAG(std::string, mode, "",
          "Default rollout mode (sana-wm: streaming | bidirectional; requests override it).");
ABSL_FLAG(std::string, prompt_embeddings, "",
          "Safetensors file of prompt embeddings, selectable per request (sana-wm).");
ABSL_FLAG(std::string, vae_weights, "",
          "sana-wm: LTX-2 VAE weights, `dummy` (default) or a safetensors path.");
ABSL_FLAG(std::string, refiner_weights, "",
          "sana-wm: LTX-2 refiner weights, `dummy` (default), a safetensors path, or `none`.");
ABSL_FLAG(std::string, refiner_prompt_embeddings, "",
          "sana-wm: refiner prompt embeddings (safetensors; NAME -> [L, caption_channels]).");
ABSL_FLAG(int, frames_per_chunk, 16, "Frames per streamed chunk, for models with a free choice.");
ABSL_FLAG(int, max_concurrent, 1, "Rollouts this worker runs at once.");
ABSL_FLAG(int, threads, 0, "CPU threads for model kernels (0 = all cores).");
ABSL_FLAG(int, max_batch, 4,
          "Co-batching: rollouts of one model run in one batched forward per denoising step "
          "when compatible (sana-wm streaming); 1 = off. Capped by --max-concurrent.");
ABSL_FLAG(double, batch_gather_fraction, 0.25,
          "Co-batching: how long a rollout ready for its next chunk waits for the others, as a "
          "fraction of the last batch's run time.");
ABSL_FLAG(int, batch_gather_max_ms, 50, "Co-batching: cap of that wait, milliseconds.");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:0",
          "Prometheus /metrics address (host:port; port 0 = ephemeral; empty = off).");
ABSL_FLAG(std::string, log_level, "info", "debug | info | warning | error");

namespace wmserve::worker {
namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "wmserve-worker: %s\n", what.c_str());
  return 1;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("wmserve-worker --scheduler HOST:PORT --device cpu|cuda:N ...");
  if (absl::Status s = ParseDaemonFlags(argc, argv, [] { return absl::GetFlag(FLAGS_config); });
      !s.ok()) {
    return Fail(s.ToString());
  }
  std::string name = absl::GetFlag(FLAGS_name);
  if (name.empty()) name = "worker-" + std::to_string(::getpid());
  absl::StatusOr<sigset_t> init = InitDaemon(name, absl::GetFlag(FLAGS_log_level));
  if (!init.ok()) return Fail(init.status().ToString());
  const sigset_t stop_signals = *init;

  // Frames are multi-MB buffers allocated per chunk. glibc serves such blocks with mmap and
  // returns them on free, so each chunk would page-fault its memory in again; keep them in the
  // heap instead (measured: ~10 ms per 1280x704 frame of page faults otherwise).
  ::mallopt(M_MMAP_THRESHOLD, 256 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 512 << 20);

  int threads = absl::GetFlag(FLAGS_threads);
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  SetTorchThreads(threads);

  const std::string device = absl::GetFlag(FLAGS_device);
  auto registry = std::make_shared<prometheus::Registry>();
  metrics::AddBuildInfo(*registry, "worker",
                        {{"model", absl::GetFlag(FLAGS_model)},
                         {"preset", absl::GetFlag(FLAGS_preset)},
                         {"weights", absl::GetFlag(FLAGS_weights)}});
  metrics::WorkerMetrics worker_metrics(*registry);
  std::unique_ptr<DeviceMemoryProbe> memory = DeviceMemoryProbe::Create(device);
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  WorkerAgentOptions options;
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    auto started = metrics::MetricsServer::Start(absl::GetFlag(FLAGS_metrics_listen), registry);
    if (!started.ok()) return Fail(started.status().ToString());
    metrics_server = *std::move(started);
    options.metrics_endpoint = metrics_server->endpoint();
  }

  options.scheduler_address = absl::GetFlag(FLAGS_scheduler);
  options.name = name;
  options.device = device;
  options.max_concurrent = std::max(1, absl::GetFlag(FLAGS_max_concurrent));
  options.models = absl::StrSplit(absl::GetFlag(FLAGS_model), ',', absl::SkipEmpty());
  if (options.models.empty()) return Fail("--model is empty");

  std::vector<ModelConfig> configs;
  for (const std::string& model : options.models) {
    ModelConfig c;
    c.name = model;
    c.device = device;
    c.preset = absl::GetFlag(FLAGS_preset);
    c.weights = absl::GetFlag(FLAGS_weights);
    c.dtype = absl::GetFlag(FLAGS_dtype);
    c.mode = absl::GetFlag(FLAGS_mode);
    c.prompt_embeddings = absl::GetFlag(FLAGS_prompt_embeddings);
    c.vae_weights = absl::GetFlag(FLAGS_vae_weights);
    c.refiner_weights = absl::GetFlag(FLAGS_refiner_weights);
    c.refiner_prompt_embeddings = absl::GetFlag(FLAGS_refiner_prompt_embeddings);
    c.frames_per_chunk = absl::GetFlag(FLAGS_frames_per_chunk);
    c.max_batch = std::max(1, std::min(absl::GetFlag(FLAGS_max_batch), options.max_concurrent));
    c.batch_gather_fraction = absl::GetFlag(FLAGS_batch_gather_fraction);
    c.batch_gather_max_ms = absl::GetFlag(FLAGS_batch_gather_max_ms);
    c.on_batch = [&worker_metrics](int batch_size, double) { worker_metrics.BatchRun(batch_size); };
    configs.push_back(c);
  }
  ModelLoader loader = [configs]() -> absl::StatusOr<std::vector<std::unique_ptr<Model>>> {
    std::vector<std::unique_ptr<Model>> models;
    for (const ModelConfig& c : configs) {
      auto model = CreateModel(c);
      if (!model.ok()) return model.status();
      models.push_back(*std::move(model));
    }
    return models;
  };

  WM_LOG(kInfo, "worker_starting") << log::Kv("scheduler", options.scheduler_address)
                                   << log::Kv("device", device)
                                   << log::Kv("models", absl::GetFlag(FLAGS_model))
                                   << log::Kv("threads", GetTorchThreads())
                                   << log::Kv("metrics", options.metrics_endpoint)
                                   << log::Kv("runtime", TorchDescription());
  WorkerAgent agent(options, loader, &worker_metrics, memory.get());
  std::thread signals([&agent, stop_signals] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    WM_LOG(kInfo, "worker_signal") << log::Kv("signal", sig);
    agent.Shutdown();
  });
  signals.detach();  // exits with the process
  return agent.Run();
}

}  // namespace
}  // namespace wmserve::worker

int main(int argc, char** argv) { return wmserve::worker::Main(argc, argv); }
