// `perch train` and `perch qat`: training from scratch and quantization-aware training (perch/train).
#include "cmd_train.h"

#include "cli_common.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

#include "perch/core/error.h"
#include "perch/core/threads.h"
#include "perch/data/dataset.h"
#include "perch/graph/onnx_io.h"
#include "perch/graph/passes.h"
#include "perch/ptq/evaluate.h"
#include "perch/train/arch.h"
#include "perch/train/qat.h"

namespace perch::cli {

using json = nlohmann::json;

namespace {

struct CommonTrainFlags {
  std::string data = "fashion-mnist:train", eval = "fashion-mnist:test", output;
  int64_t epochs = 1, batch = 128, max_steps = 0, shift = 0;
  float lr = 0, weight_decay = -1, label_smoothing = 0;
  std::string optimizer = "adamw", schedule = "onecycle";
  bool no_flip = false;
  uint64_t seed = 1;
  int threads = 0;

  void add(CLI::App* c) {
    c->add_option("-o,--output", output, "ONNX model to write")->required();
    c->add_option("--data", data, "labelled training data spec")->capture_default_str();
    c->add_option("--eval", eval, "evaluation data spec ('' to skip); labelled, except for qat --distill (fidelity to fp32; no default there)")->capture_default_str();
    c->add_option("--epochs", epochs, "passes over the training data")->capture_default_str();
    c->add_option("--batch", batch, "mini-batch size")->capture_default_str();
    c->add_option("--max-steps", max_steps, "stop after this many steps (0: no limit)")->capture_default_str();
    c->add_option("--optimizer", optimizer, "adamw | sgd")->capture_default_str();
    c->add_option("--lr", lr, "peak learning rate (default: 2e-3 adamw / 0.05 sgd for train, a tenth for qat)");
    c->add_option("--weight-decay", weight_decay, "weight decay (default 5e-4 sgd, 0.05 adamw)");
    c->add_option("--schedule", schedule, "onecycle | cosine | constant")->capture_default_str();
    c->add_option("--label-smoothing", label_smoothing, "label smoothing of the loss")->capture_default_str();
    c->add_flag("--no-flip", no_flip, "no horizontal-flip augmentation");
    c->add_option("--shift", shift, "random shifts of up to this many pixels (augmentation)")->capture_default_str();
    c->add_option("--seed", seed, "seed of initialization, shuffling and augmentation")->capture_default_str();
    c->add_option("--threads", threads, "worker threads (default: all the process may use)");
  }

  train::TrainOptions options(float default_lr_scale) const {
    train::TrainOptions o;
    o.epochs = epochs, o.batch = batch, o.max_steps = max_steps, o.seed = seed;
    o.flip = !no_flip, o.shift = shift, o.label_smoothing = label_smoothing;
    o.optimizer.kind = optimizer;
    const bool sgd = optimizer == "sgd";
    o.optimizer.lr = lr > 0 ? lr : (sgd ? 0.05f : 2e-3f) * default_lr_scale;
    o.optimizer.weight_decay = weight_decay >= 0 ? weight_decay : (sgd ? 5e-4f : 0.05f);
    o.optimizer.nesterov = sgd;
    o.schedule.kind = schedule;
    return o;
  }
};

json logs_json(const std::vector<train::EpochLog>& logs) {
  json a = json::array();
  for (const auto& l : logs)
    a.push_back({{"epoch", l.epoch}, {"steps", l.steps}, {"loss", l.loss}, {"train_accuracy", l.train_accuracy},
                 {"seconds", l.seconds}, {"eval_accuracy", l.eval_accuracy}});
  return a;
}

double eval_model(const graph::Model& m, const Dataset& data, const std::string& label) {
  return ptq::evaluate(runtime::Executor(m), data, 256, label).accuracy();
}

}  // namespace

std::function<std::optional<int>()> add_train_commands(CLI::App& app, bool& as_json) {
  // train
  auto* t = app.add_subcommand("train", "train a built-in architecture from scratch, write ONNX (BN folded unless --keep-bn)");
  auto tf = std::make_shared<CommonTrainFlags>();
  auto arch = std::make_shared<std::string>("mbv2");
  auto width = std::make_shared<float>(1.0f);
  auto keep_bn = std::make_shared<bool>(false);
  t->add_option("--arch", *arch, "convnet | mbv2")->capture_default_str();
  t->add_option("--width", *width, "channel width multiplier")->capture_default_str();
  t->add_flag("--keep-bn", *keep_bn, "write BatchNormalization unfolded (e.g. for perch qat's batch-statistics phase)");
  tf->add(t);
  t->add_flag("--json", as_json, "print a JSON summary on stdout");

  // qat
  auto* q = app.add_subcommand("qat", "quantization-aware training of a float ONNX model, export QDQ");
  auto qf = std::make_shared<CommonTrainFlags>();
  auto model = std::make_shared<std::string>();
  auto weights = std::make_shared<std::string>("per-channel");
  auto wbits = std::make_shared<int>(8), abits = std::make_shared<int>(8);
  auto learn = std::make_shared<bool>(false);
  auto scheme = std::make_shared<SchemeFlags>();
  auto calib = std::make_shared<int64_t>(1024);
  auto group = std::make_shared<int64_t>(16);
  auto freeze_bn = std::make_shared<float>(0.5f);
  auto freeze_ranges = std::make_shared<float>(0.8f);
  auto distill = std::make_shared<bool>(false);
  auto ptq_biases = std::make_shared<bool>(false), empirical_bc = std::make_shared<bool>(false);
  q->add_option("model", *model, "float ONNX model")->required();
  q->add_option("--weights", *weights, "per-channel | per-tensor | per-group:G")->capture_default_str();
  q->add_option("--weight-bits", *wbits, "weight bits (2..8)")->capture_default_str();
  q->add_option("--act-bits", *abits, "activation bits (2..8)")->capture_default_str();
  q->add_flag("--learn-scales", *learn, "learn weight and activation step sizes (LSQ)");
  q->add_option("--calib-count", *calib, "images calibrating the initial ranges")->capture_default_str();
  q->add_option("--freeze-bn", *freeze_bn,
                "fraction of the steps that use BN batch statistics (Conv->BN pairs of the model, and BN nodes after other "
                "ops); then running statistics, frozen. 0: BN folded before training (other BN nodes frozen)")
      ->capture_default_str();
  q->add_option("--freeze-ranges", *freeze_ranges,
                "fraction of the steps after which activation ranges stop following the batches (0: the calibrated "
                "ranges throughout)")
      ->capture_default_str();
  add_scheme_flags(q, *scheme);  // the calibration that sets the starting point, as perch quantize's
  q->add_flag("--ptq-biases", *ptq_biases,
              "start from the biases of perch quantize's bias correction (training starts at the bias-corrected PTQ model)");
  q->add_flag("--empirical-bias-correction", *empirical_bc, "with --ptq-biases: the empirical bias correction too");
  q->add_flag("--distill", *distill,
              "train without labels: match the float model's outputs (KL of an output softmax per row, else MSE); "
              "--data may be unlabelled (e.g. the calibration .npy)");
  qf->add(q);
  q->add_flag("--json", as_json, "print a JSON summary on stdout");

  return [=, &as_json]() -> std::optional<int> {
    if (t->parsed()) {
      if (tf->threads > 0) set_num_threads(tf->threads);
      const Dataset data = load_dataset(tf->data);
      train::ArchOptions ao;
      PERCH_CHECK(data.images.rank() == 4, data.name, ": training needs images [N, C, H, W]");
      ao.in_channels = data.images.dim(1), ao.height = data.images.dim(2), ao.width = data.images.dim(3);
      ao.classes = 1 + *std::max_element(data.labels.begin(), data.labels.end());
      ao.width_mult = *width;
      ao.seed = tf->seed;
      graph::Model m = train::build_arch(*arch, ao);
      m.source = "perch train --arch " + *arch;
      std::optional<Dataset> ev;
      if (!tf->eval.empty()) ev = load_dataset(tf->eval);
      train::Tape tape(m, train::default_parameters(m));
      auto logs = train::fit(tape, data, tf->options(1.0f), [&]() {
        return ev ? train::accuracy(tape, *ev, 256, "eval") : -1.0;
      });
      graph::Model out = *keep_bn ? m : train::export_inference(m);
      out.doc_string = "trained by perch: perch train --arch " + *arch + " --epochs " + std::to_string(tf->epochs) +
                       " --seed " + std::to_string(tf->seed);
      graph::save_model(out, tf->output);
      double exported = -1;
      if (ev) exported = eval_model(out, *ev, "exported model");
      if (as_json) {
        std::cout << json{{"arch", *arch}, {"output", tf->output}, {"epochs", logs_json(logs)},
                          {"exported_accuracy", exported}}.dump(2)
                  << "\n";
      } else {
        for (const auto& l : logs)
          std::printf("epoch %lld: loss %.4f  train %.4f  eval %.4f  (%.1f s, %.3f s/step)\n",
                      static_cast<long long>(l.epoch), l.loss, l.train_accuracy, l.eval_accuracy, l.seconds,
                      l.seconds / static_cast<double>(std::max<int64_t>(1, l.steps)));
        if (ev)
          std::printf("wrote %s: top-1 %.4f on %s (BN %s)\n", tf->output.c_str(), exported, ev->name.c_str(),
                      *keep_bn ? "kept" : "folded");
        else std::printf("wrote %s\n", tf->output.c_str());
      }
      return 0;
    }
    if (q->parsed()) {
      if (qf->threads > 0) set_num_threads(qf->threads);
      graph::Model m = graph::load_model(*model);
      upcast_float16_with_note(m);
      const Dataset data = load_dataset(qf->data);
      std::optional<Dataset> ev;
      // --distill usually serves models that are no Fashion-MNIST classifier: no evaluation unless asked for.
      const bool eval_given = q->get_option("--eval")->count() > 0;
      if (!qf->eval.empty() && (eval_given || !*distill)) ev = load_dataset(qf->eval);
      train::QatOptions o;
      ptq::WeightOptions& w = o.ptq.weights;
      parse_granularity(*weights, w);
      w.bits = *wbits;
      o.ptq.activations.bits = *abits;
      apply_scheme_flags(*scheme, o.ptq);
      o.calib_images = *calib;
      o.learn_scales = *learn;
      o.freeze_bn = *freeze_bn;
      o.freeze_ranges = *freeze_ranges;
      o.distill = *distill;
      PERCH_CHECK(!*empirical_bc || *ptq_biases, "--empirical-bias-correction needs --ptq-biases");
      o.init_ptq_biases = *ptq_biases;
      o.ptq.empirical_bias_correction = *empirical_bc;
      o.train = qf->options(0.1f);
      const bool labelled = ev && ev->has_labels();
      double fp32 = -1;
      if (labelled) {
        graph::Model c = m;
        graph::canonicalize(c);
        fp32 = eval_model(c, *ev, "fp32");
      }
      train::QatResult r = train::quantization_aware_training(m, data, o, ev ? &*ev : nullptr);
      r.exported.model.doc_string = "QAT by perch from " + *model;
      graph::save_model(r.exported.model, qf->output);
      double exported = -1;
      if (labelled) exported = eval_model(r.exported.model, *ev, "exported QDQ");
      const bool fid = ev && *distill;
      auto fid_json = [](const train::Fidelity& f) {
        return json{{"loss", f.loss}, {"agreement", f.agreement}, {"rows", f.rows}};
      };
      if (as_json) {
        json j{{"model", *model}, {"output", qf->output}, {"distill", *distill}, {"fp32_accuracy", fp32},
               {"ptq_accuracy", r.ptq_accuracy}, {"fake_quant_accuracy", r.fq_accuracy},
               {"qdq_accuracy", exported}, {"epochs", logs_json(r.logs)}};
        if (fid) j["fidelity"] = {{"ptq", fid_json(r.ptq_fidelity)}, {"qat", fid_json(r.qat_fidelity)}};
        std::cout << j.dump(2) << "\n";
      } else {
        if (labelled) {
          std::printf("  %-34s %s\n", "configuration", "top-1");
          std::printf("  %-34s %.4f\n", "fp32", fp32);
          std::printf("  %-34s %.4f\n", "PTQ (same scheme, before QAT)", r.ptq_accuracy);
          std::printf("  %-34s %.4f\n", "QAT fake-quant model", r.fq_accuracy);
          std::printf("  %-34s %.4f   <- written to %s\n", "QAT exported QDQ (perch sim)", exported, qf->output.c_str());
        }
        if (fid) {
          // Distillation loss: KL per softmax row (agreement: rows whose argmax match fp32's), or MSE.
          const bool kl = r.qat_fidelity.agreement >= 0;
          auto agree = [](double a) { return a >= 0 ? std::to_string(a).substr(0, 6) : std::string("-"); };
          std::printf("  %-34s %-12s %s   (on %s)\n", "vs fp32", kl ? "KL per row" : "MSE", "agreement", ev->name.c_str());
          std::printf("  %-34s %-12.5g %s\n", "PTQ (same scheme, before QAT)", r.ptq_fidelity.loss,
                      agree(r.ptq_fidelity.agreement).c_str());
          std::printf("  %-34s %-12.5g %s   <- written to %s\n", "QAT exported QDQ (perch sim)", r.qat_fidelity.loss,
                      agree(r.qat_fidelity.agreement).c_str(), qf->output.c_str());
        }
        if (!labelled && !fid) std::printf("wrote %s (training loss %.5f)\n", qf->output.c_str(), r.logs.empty() ? 0.0 : r.logs.back().loss);
      }
      return 0;
    }
    return std::nullopt;
  };
}

}  // namespace perch::cli
