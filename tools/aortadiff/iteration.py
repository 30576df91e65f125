"""One AortaDiff training iteration, as a ``SupervisedTrainer(iteration_update=...)`` callable.

What MONAI's stock iteration cannot do: two heads with different targets, a per-sample labeled flag
(unlabeled samples contribute the image term only) and Kendall weighting with learnable s1, s2.

Batch keys (2D slices, channel first): ``ncct``, ``cect`` in [-1, 1] (B, 1, H, W); ``roi`` in {0, 1};
``lumen_sdf`` in [-1, 1] (zeros for unlabeled samples); ``labeled`` (B,).
Per iteration: t ~ U{0..T-1}, x_t = sqrt(abar_t) cect + sqrt(1 - abar_t) eps, network(cat(x_t, ncct), t);
L_img = image_mse_weight * MSE(image output, target of prediction_type) + lpips_weight * LPIPS_roi(x0_hat, cect);
L_mask = MSE(SDF output, lumen_sdf) over labeled samples; L = Kendall(L_img, L_mask).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tools.diffusion.schedule import training_target, x0_from_output
from tools.aortadiff.labeled_mse import labeled_mse

SCALAR_KEYS = ("loss", "loss_img", "loss_mse", "loss_lpips", "loss_mask", "s1", "s2", "w_img", "w_mask", "n_labeled")


def scalar_logs(output: Any) -> dict[str, float]:
    """The scalars of an iteration output, for StatsHandler / TensorBoardStatsHandler ``output_transform``."""
    if isinstance(output, list):  # decollated
        output = output[0]
    return {k: float(output[k]) for k in SCALAR_KEYS if k in output}


class AortaDiffIteration:
    """Callable ``(engine, batchdata) -> [dict]`` for :class:`monai.engines.SupervisedTrainer`.

    The output is a one-item list of scalars, the decollated form MONAI's handlers expect: the bundle
    tracking option (``--tracking mlflow``) reads it with ``from_engine(['loss'], first=True)``.

    Args:
        scheduler: MONAI noise scheduler (``num_train_timesteps``, ``alphas_cumprod``, ``add_noise``).
        loss_weighting: :class:`tools.aortadiff.kendall.KendallUncertaintyWeighting` (its parameters must be in
            the engine's optimiser when learnable).
        prediction_type: "epsilon" | "sample" | "v_prediction" (AortaDiff: "sample").
        lpips_loss: :class:`tools.aortadiff.lpips_loss.ROILPIPSLoss` or None; lpips_weight its weight.
        image_mse_weight: weight of the MSE on the image-head target.
        use_mask_head: False for the synthesis-only CDM baseline (image loss only).
    """

    def __init__(self, scheduler: Any, loss_weighting: torch.nn.Module, prediction_type: str = "sample",
                 lpips_loss: torch.nn.Module | None = None, lpips_weight: float = 1.0, image_mse_weight: float = 1.0,
                 use_mask_head: bool = True, cond_key: str = "ncct", image_key: str = "cect", roi_key: str = "roi",
                 sdf_key: str = "lumen_sdf", labeled_key: str = "labeled") -> None:
        self.scheduler = scheduler
        self.loss_weighting = loss_weighting
        self.prediction_type = prediction_type
        self.lpips_loss = lpips_loss
        self.lpips_weight = float(lpips_weight) if lpips_loss is not None else 0.0
        self.image_mse_weight = float(image_mse_weight)
        self.use_mask_head = use_mask_head
        self.keys = dict(cond=cond_key, image=image_key, roi=roi_key, sdf=sdf_key, labeled=labeled_key)

    def __call__(self, engine: Any, batchdata: dict) -> list[dict]:
        dev = engine.state.device
        x0 = batchdata[self.keys["image"]].to(dev).float()
        cond = batchdata[self.keys["cond"]].to(dev).float()
        roi = batchdata[self.keys["roi"]].to(dev).float()
        b = x0.shape[0]
        noise = torch.randn_like(x0)
        t = torch.randint(0, int(self.scheduler.num_train_timesteps), (b,), device=dev, dtype=torch.long)
        acp = self.scheduler.alphas_cumprod.to(dev)
        x_t = self.scheduler.add_noise(x0, noise, t)

        engine.network.train()
        self.loss_weighting.to(dev)
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast(device_type=dev.type if isinstance(dev, torch.device) else str(dev).split(":")[0],
                            enabled=bool(engine.amp), **(engine.amp_kwargs or {})):
            out = engine.network(torch.cat([x_t, cond], dim=1), t)
        out = out.float()
        img_out = out[:, : x0.shape[1]]
        loss_mse = F.mse_loss(img_out, training_target(self.prediction_type, x0, noise, t, acp))
        loss_img = self.image_mse_weight * loss_mse
        loss_lpips = torch.zeros((), device=dev)
        if self.lpips_loss is not None and self.lpips_weight > 0:
            self.lpips_loss.to(dev)
            x0_hat = x0_from_output(self.prediction_type, img_out, x_t, t, acp).clamp(-1.5, 1.5)
            loss_lpips = self.lpips_loss(x0_hat, x0, roi)
            loss_img = loss_img + self.lpips_weight * loss_lpips
        result: dict[str, Any] = {}
        if self.use_mask_head and out.shape[1] > x0.shape[1]:
            sdf = batchdata[self.keys["sdf"]].to(dev).float()
            labeled = torch.as_tensor(batchdata[self.keys["labeled"]]).to(dev).float().reshape(-1)
            loss_mask, n_lab = labeled_mse(out[:, x0.shape[1]:], sdf, labeled)
            loss = self.loss_weighting(loss_img, loss_mask, mask_valid=bool(n_lab > 0))
            result.update(loss_mask=float(loss_mask.detach()), n_labeled=float(n_lab))
        else:
            loss = self.loss_weighting(loss_img, None)
        if engine.amp and getattr(engine, "scaler", None) is not None:
            engine.scaler.scale(loss).backward()
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.optimizer.step()
        result.update(loss=float(loss.detach()), loss_img=float(loss_img.detach()), loss_mse=float(loss_mse.detach()),
                      loss_lpips=float(loss_lpips.detach()), **self.loss_weighting.weights())
        return [result]
