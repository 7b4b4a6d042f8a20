import pytest
import torch
import torch.nn.functional as F

from minivit.distill import check_student, freeze, hard_distillation_loss
from minivit.vit import ViT


def test_hard_distillation_loss_is_half_label_half_teacher_argmax():
    torch.manual_seed(0)
    cls_logits, dist_logits, teacher = torch.randn(3, 6, 4).unbind(0)
    labels = torch.tensor([0, 3, 1, 2, 2, 0])
    loss = hard_distillation_loss(cls_logits, dist_logits, labels, teacher)
    by_hand = 0.0
    for i in range(6):
        by_hand += -0.5 * cls_logits[i].log_softmax(0)[labels[i]] / 6
        by_hand += -0.5 * dist_logits[i].log_softmax(0)[teacher[i].argmax()] / 6
    torch.testing.assert_close(loss, by_hand)
    # the teacher's confidence does not matter, only its argmax (hard labels)
    torch.testing.assert_close(hard_distillation_loss(cls_logits, dist_logits, labels, 10 * teacher), loss)
    # soft targets (mixup) work for the label term
    soft = F.one_hot(labels, 4).float()
    torch.testing.assert_close(hard_distillation_loss(cls_logits, dist_logits, soft, teacher), loss)


def test_hard_distillation_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(B, classes\)"):
        hard_distillation_loss(torch.randn(2, 4), torch.randn(2, 4), torch.zeros(2, dtype=torch.long),
                               torch.randn(2, 5))


def test_freeze_and_check_student():
    teacher = freeze(torch.nn.Linear(3, 2).train())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    check_student(ViT(image_size=8, patch_size=4, dim=8, depth=1, num_heads=2, mlp_dim=8, distill_token=True))
    with pytest.raises(ValueError, match="distill_token=True"):
        check_student(ViT(image_size=8, patch_size=4, dim=8, depth=1, num_heads=2, mlp_dim=8))
