"""Firefly width growth: candidates, their fit and scores, selection and application."""

from fireflytui.growth.config import METHODS, GrowthConfig
from fireflytui.growth.report import GrowReport, UnitReport
from fireflytui.growth.step import GrowResult, grow_step

__all__ = ["METHODS", "GrowReport", "GrowResult", "GrowthConfig", "UnitReport", "grow_step"]
