//! The MoE block on the CPU: sigmoid router with correction bias and group-limited top-k, experts run on the rows
//! routed to them, weighted combine, plus the shared expert.
use rayon::prelude::*;

use super::{CpuMlp, CpuTensor};
use crate::{
    backend::{ExpertsSource, Routing},
    Error, Result,
};

pub struct CpuExperts {
    /// [n_experts, hidden], f32.
    router: Vec<f32>,
    correction_bias: Vec<f32>,
    experts: Vec<CpuMlp>,
    shared: Option<CpuMlp>,
    routing: Routing,
    hidden: usize,
}

impl CpuExperts {
    pub fn new(src: &ExpertsSource) -> Result<Self> {
        let n = src.experts.len();
        let hidden = src.router.shape.get(1).copied().unwrap_or(0);
        src.router.expect_shape(&[n, hidden])?;
        let correction_bias = match &src.correction_bias {
            Some(b) => b.expect_shape(&[n])?.to_f32_vec()?,
            None => vec![0.0; n],
        };
        let r = src.routing;
        if r.n_group == 0 || !n.is_multiple_of(r.n_group) || r.topk_group > r.n_group || r.top_k > n {
            return Err(Error::InvalidInput(format!("routing {r:?} does not fit {n} experts")));
        }
        Ok(CpuExperts {
            router: src.router.to_f32_vec()?,
            correction_bias,
            experts: src.experts.iter().map(CpuMlp::new).collect::<Result<_>>()?,
            shared: src.shared.as_ref().map(CpuMlp::new).transpose()?,
            routing: r,
            hidden,
        })
    }

    /// Chosen experts and their weights for one token.
    fn route(&self, x: &[f32]) -> Vec<(usize, f32)> {
        let n = self.experts.len();
        let r = &self.routing;
        let scores: Vec<f32> = (0..n)
            .map(|e| sigmoid(super::attention::dot(x, &self.router[e * self.hidden..(e + 1) * self.hidden])))
            .collect();
        let mut choice: Vec<f32> = scores.iter().zip(&self.correction_bias).map(|(s, b)| s + b).collect();
        if r.n_group > 1 {
            let per = n / r.n_group;
            // A group's score is the sum of its two best biased scores; keep the best `topk_group` groups.
            let group_score: Vec<f32> =
                choice.chunks(per).map(|g| top_indices(g, 2.min(per)).iter().map(|&i| g[i]).sum()).collect();
            let keep = top_indices(&group_score, r.topk_group);
            for (g, chunk) in choice.chunks_mut(per).enumerate() {
                if !keep.contains(&g) {
                    chunk.iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
                }
            }
        }
        let chosen = top_indices(&choice, r.top_k);
        let mut weights: Vec<f32> = chosen.iter().map(|&e| scores[e]).collect();
        if r.norm_topk_prob {
            let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
            weights.iter_mut().for_each(|w| *w /= sum);
        }
        weights.iter_mut().for_each(|w| *w *= r.routed_scaling_factor);
        chosen.into_iter().zip(weights).collect()
    }

    pub fn forward(&self, x: &CpuTensor) -> Result<CpuTensor> {
        if x.cols != self.hidden {
            return Err(Error::InvalidInput(format!("MoE expects {} features, got {}", self.hidden, x.cols)));
        }
        let routes: Vec<Vec<(usize, f32)>> = (0..x.rows).into_par_iter().map(|r| self.route(x.row(r))).collect();
        // Rows (and weights) assigned to each expert.
        let mut assigned: Vec<Vec<(usize, f32)>> = vec![Vec::new(); self.experts.len()];
        for (row, chosen) in routes.iter().enumerate() {
            for &(e, w) in chosen {
                assigned[e].push((row, w));
            }
        }
        let outputs: Vec<(usize, CpuTensor)> = assigned
            .par_iter()
            .enumerate()
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(e, rows)| {
                let idx: Vec<usize> = rows.iter().map(|&(r, _)| r).collect();
                Ok((e, self.experts[e].forward(&x.select_rows(&idx))?))
            })
            .collect::<Result<_>>()?;
        let mut y = match &self.shared {
            Some(shared) => shared.forward(x)?,
            None => CpuTensor::zeros(x.rows, x.cols),
        };
        for (e, out) in outputs {
            for (i, &(row, w)) in assigned[e].iter().enumerate() {
                y.row_mut(row).iter_mut().zip(out.row(i)).for_each(|(y, o)| *y += w * o);
            }
        }
        Ok(y)
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Indices of the `k` largest values, largest first; ties go to the lower index.
fn top_indices(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_indices_orders_and_breaks_ties_low() {
        assert_eq!(top_indices(&[0.1, 0.5, 0.5, -1.0, 0.9], 3), vec![4, 1, 2]);
    }
}
