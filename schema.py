"""The example app's schema: creator video upload & approval (see docs/example-app.md)."""

from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator

from server import Schema, SearchIndex, Table

VideoStatus = Literal["uploaded", "processing", "under_review", "approved", "changes_needed", "rejected", "failed"]
Platform = Literal["tiktok", "instagram", "youtube", "x"]


class EngagementMetrics(BaseModel):
    views: int = Field(default=0, ge=0)
    likes: int = Field(default=0, ge=0)
    comments: int = Field(default=0, ge=0)
    shares: int = Field(default=0, ge=0)


class ApprovalEntry(BaseModel):
    status: VideoStatus
    reviewerId: str | None = None
    note: str | None = None
    at: float  # ms since epoch


class Video(BaseModel):
    creatorId: str  # the creator's identity.token_identifier
    creatorName: str | None = None
    campaignId: str
    storageId: str | None = None
    thumbnailStorageId: str | None = None
    thumbnailUrl: str | None = None
    duration: float | None = None  # seconds
    width: int | None = None
    height: int | None = None
    postCreatedAt: float | None = None
    status: VideoStatus = "uploaded"
    failureReason: str | None = None
    # Processing bookkeeping (functions/processing.py): `processingRound` counts submissions (the
    # first upload is round 1, each resubmission or requeue adds one) and rides along with the job
    # so a callback of an earlier round is recognised; `processingAttempts` counts the job requests
    # of the current round; `lastError` is the latest failed request's error.
    processingRound: int = 1
    processingAttempts: int = 0
    processingUpdatedAt: float | None = None  # ms since epoch, by requeue_stuck
    lastError: str | None = None
    engagementMetrics: EngagementMetrics | None = None
    approvalHistory: list[ApprovalEntry] = Field(default_factory=list)
    paymentStatus: Literal["unpaid", "pending", "paid"] = "unpaid"
    caption: str = Field(default="", max_length=2200)
    platformSelections: list[Platform] = Field(default_factory=list)
    hashtags: list[str] = Field(default_factory=list)
    # What the search index `search_text` covers: the caption and the hashtags as one string (an
    # index searches one string field; `hashtags` is a list). Derived by the validator below each
    # time a video is written (insert, patch, replace), so no mutation can forget it and what a
    # writer gives is replaced. Videos stored before it existed lack it until they are next
    # written, or until `videos:backfillSearchText` writes them all.
    searchText: str = ""

    @model_validator(mode="after")
    def _derive_search_text(self) -> Self:
        self.searchText = search_text(self.caption, self.hashtags)
        return self


def search_text(caption: str, hashtags: list[str]) -> str:
    """`Video.searchText`: "<caption> #tag1 #tag2". Tokenizing drops the `#`, so a search for
    "#summer" and one for "summer" both look for the term `summer`."""
    return " ".join([caption, *(f"#{tag}" for tag in hashtags)]).strip()


class Campaign(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    brand: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=5000)
    status: Literal["active", "closed"] = "active"
    createdBy: str | None = None  # the reviewer's token_identifier


class Reviewer(BaseModel):
    """A user with the reviewer role granted in the app (`users:addReviewer`), as opposed to by a
    `role` claim in the user's token."""

    tokenIdentifier: str


class ProcessingJob(BaseModel):
    """The processing service's own bookkeeping: how many job requests it got for a video (for
    PROCESSING_FAIL_FIRST)."""

    videoId: str
    requests: int = 0


class WebhookDelivery(BaseModel):
    """A processed delivery of the processing webhook, by its `webhook-id`: a replay is answered
    `duplicate` and changes nothing."""

    webhookId: str
    videoId: str
    outcome: str  # "applied" or "ignored: <why>"
    at: float


schema = Schema(
    videos=Table(
        Video,
        indexes={
            # Each listing has an index whose order is the listing's (newest first = descending
            # `_creationTime`, which every index ends with): with a status filter the status is
            # an equality prefix, without one the index must not hold the status at all, or the
            # page would be ordered by status first.
            "by_status": ["status"],
            "by_campaign": ["campaignId"],
            "by_campaign_status": ["campaignId", "status"],
            "by_creator": ["creatorId"],
            "by_creator_status": ["creatorId", "status"],
        },
        # Reviewers search captions and hashtags (videos:searchForReview) within a status and a
        # campaign. Status is the first filter field because nearly every search gives it: a
        # live search is re-run only by writes to videos that hold its terms and have the
        # values it gives for the leading filter fields (status, or status and campaign).
        search_indexes={"search_text": SearchIndex("searchText", filter_fields=["status", "campaignId"])},
    ),
    campaigns=Table(Campaign, indexes={"by_status": ["status"], "by_name": ["name"]}),
    reviewers=Table(Reviewer, indexes={"by_token": ["tokenIdentifier"]}),
    processingJobs=Table(ProcessingJob, indexes={"by_video": ["videoId"]}),
    webhookDeliveries=Table(WebhookDelivery, indexes={"by_webhook_id": ["webhookId"]}),
)
