"""The example app's schema: creator video upload & approval (see docs/example-app.md)."""

from typing import Literal

from pydantic import BaseModel, Field

from server import Schema, Table

VideoStatus = Literal["uploaded", "processing", "under_review", "approved", "changes_needed", "rejected"]
Platform = Literal["tiktok", "instagram", "youtube", "x"]


class EngagementMetrics(BaseModel):
    views: int = 0
    likes: int = 0
    comments: int = 0
    shares: int = 0


class ApprovalEntry(BaseModel):
    status: VideoStatus
    reviewerId: str | None = None
    note: str | None = None
    at: float  # ms since epoch


class Video(BaseModel):
    creatorId: str
    campaignId: str
    storageId: str | None = None
    thumbnailUrl: str | None = None
    postCreatedAt: float | None = None
    status: VideoStatus = "uploaded"
    engagementMetrics: EngagementMetrics | None = None
    approvalHistory: list[ApprovalEntry] = Field(default_factory=list)
    paymentStatus: Literal["unpaid", "pending", "paid"] = "unpaid"
    caption: str = Field(default="", max_length=2200)
    platformSelections: list[Platform] = Field(default_factory=list)
    hashtags: list[str] = Field(default_factory=list)


class Campaign(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    brand: str
    description: str = ""
    status: Literal["active", "closed"] = "active"


schema = Schema(
    videos=Table(
        Video,
        indexes={
            "by_status": ["status"],
            "by_campaign": ["campaignId", "status"],
            "by_creator": ["creatorId"],
        },
    ),
    campaigns=Table(Campaign, indexes={"by_status": ["status"], "by_name": ["name"]}),
)
