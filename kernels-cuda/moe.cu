// MoE routing: sigmoid scores, correction bias for the choice, group-limited top-k, weights from the unbiased
// scores. One thread per token (n_experts is at most a few hundred).
#include "common.cuh"

// Limits checked by the host before launch (runtime/src/backend/cuda).
#define MAX_EXPERTS 512
#define MAX_GROUPS 64

extern "C" __global__ void moe_route(const float* logits, const float* correction_bias, int tokens, int experts,
                                     int top_k, int n_group, int topk_group, int norm_topk_prob, float scaling,
                                     uint32_t* topk_ids, float* topk_weights) {
  int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  const float* lg = logits + (size_t)t * experts;
  float choice[MAX_EXPERTS];
  for (int e = 0; e < experts; ++e) {
    float s = 1.0f / (1.0f + expf(-lg[e]));
    choice[e] = s + (correction_bias != nullptr ? correction_bias[e] : 0.0f);
  }
  if (n_group > 1) {
    int per = experts / n_group;
    bool keep[MAX_GROUPS] = {};
    float group_score[MAX_GROUPS];
    for (int g = 0; g < n_group; ++g) {
      // Sum of the two best biased scores of the group.
      float a = -INFINITY, b = -INFINITY;
      for (int e = g * per; e < (g + 1) * per; ++e) {
        if (choice[e] > a) { b = a; a = choice[e]; }
        else if (choice[e] > b) b = choice[e];
      }
      group_score[g] = per > 1 ? a + b : a;
    }
    for (int i = 0; i < topk_group; ++i) {
      int best = -1;
      for (int g = 0; g < n_group; ++g)
        if (!keep[g] && (best < 0 || group_score[g] > group_score[best])) best = g;
      keep[best] = true;
    }
    for (int e = 0; e < experts; ++e)
      if (!keep[e / per]) choice[e] = -INFINITY;
  }
  float sum = 0.0f;
  for (int i = 0; i < top_k; ++i) {
    int best = -1;
    for (int e = 0; e < experts; ++e)
      if (best < 0 || choice[e] > choice[best]) best = e;
    float s = 1.0f / (1.0f + expf(-lg[best]));
    choice[best] = -INFINITY;
    topk_ids[(size_t)t * top_k + i] = best;
    topk_weights[(size_t)t * top_k + i] = s;
    sum += s;
  }
  for (int i = 0; i < top_k; ++i) {
    float w = topk_weights[(size_t)t * top_k + i];
    if (norm_topk_prob) w /= (sum + 1e-20f);
    topk_weights[(size_t)t * top_k + i] = w * scaling;
  }
}
