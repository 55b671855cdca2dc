"""Insights' settings (environment prefix ``CIVIC_INSIGHTS_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from civicsignals.common.settings import ServiceSettings
from civicsignals.common.web_login import SignInThrottleSettings


class InsightsSettings(ServiceSettings, SignInThrottleSettings):
    model_config = SettingsConfigDict(env_prefix="CIVIC_INSIGHTS_", extra="ignore")
    service_name: ClassVar[str] = "insights"

    port: int = 8005
    sqlite_statements_on_loop: bool = Field(
        default=False,
        description="off here: the dashboard's aggregates can read for long, and on the driver's thread "
        "they leave the event loop free for other pages",
    )
    timezone: str = Field(
        default="Europe/Amsterdam",
        description="the zone whose calendar days the aggregates count in; changing it needs a rebuild",
    )
    session_secret: str = Field(
        default="",
        description="HMAC key that signs the dashboard's login cookie; empty means a random key kept in "
        "<data_dir>/insights-session-secret (set one shared value when running several replicas)",
    )
    session_ttl_s: int = Field(default=8 * 3600, ge=60, description="lifetime of a dashboard login")
    cookie_secure: bool = Field(default=False, description="mark the login cookie Secure (behind HTTPS)")
    # login_failures_burst, login_failures_per_minute: SignInThrottleSettings
    emerging_false_alarm_rate: float = Field(
        default=0.001, gt=0, lt=0.5, description="stated false-alarm rate per series and day"
    )
    emerging_baseline_weeks: int = Field(default=8, ge=2, le=52, description="same weekdays in the baseline")
    emerging_min_count: int = Field(default=5, ge=1, description="a day with fewer signals never alarms")
    emerging_interval_s: float = Field(
        default=600.0, gt=0, description="how often completed days are checked"
    )
    emerging_lookback_days: int = Field(default=3, ge=1, le=60, description="completed days checked each run")
    apply_batch_size: int = Field(default=200, ge=1, le=5000, description="events applied per transaction")
    transparency_days: int = Field(default=365, ge=7, description="the period the transparency page covers")
    min_cell: int = Field(default=5, ge=2, description="public cells below this many signals are suppressed")
