"""Initial schema: detections, incidents, revisions, alerts, subscriptions, deliveries.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "detections",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("station_id", sa.String(100), nullable=False, index=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("detector", sa.String(40), nullable=False),
        sa.Column("detector_version", sa.String(20), nullable=False),
        sa.Column("onset", sa.Float, nullable=False, index=True),
        sa.Column("peak_time", sa.Float, nullable=False),
        sa.Column("amplitude", sa.Float, nullable=False),
        sa.Column("units", sa.String(20), nullable=False),
        sa.Column("declared", sa.Float, nullable=False),
        sa.Column("lat", sa.Float, nullable=True),
        sa.Column("lon", sa.Float, nullable=True),
        sa.Column("extra", sa.JSON, nullable=False),
    )
    op.create_table(
        "incidents",
        sa.Column("incident_id", sa.String(100), primary_key=True),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("issued", sa.Float, nullable=False),
        sa.Column("origin_time", sa.Float, nullable=True),
        sa.Column("lat", sa.Float, nullable=True),
        sa.Column("lon", sa.Float, nullable=True),
        sa.Column("speed_m_s", sa.Float, nullable=True),
    )
    op.create_table(
        "incident_revisions",
        sa.Column("key", sa.String(120), primary_key=True),
        sa.Column("incident_id", sa.String(100), nullable=False, index=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("issued", sa.Float, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("identifier", sa.String(200), primary_key=True),
        sa.Column("incident_id", sa.String(100), nullable=False, index=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("msg_type", sa.String(10), nullable=False),
        sa.Column("sent", sa.Float, nullable=False, index=True),
        sa.Column("event", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("urgency", sa.String(20), nullable=False),
        sa.Column("certainty", sa.String(20), nullable=False),
        sa.Column("headline", sa.String(300), nullable=False),
        sa.Column("references", sa.JSON, nullable=False),
        sa.Column("cap_xml", sa.Text, nullable=False),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("area", sa.JSON, nullable=False),
        sa.Column("min_severity", sa.String(20), nullable=False),
        sa.Column("channels", sa.JSON, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("active", sa.Integer, nullable=False),
    )
    op.create_table(
        "deliveries",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("alert_identifier", sa.String(200), sa.ForeignKey("alerts.identifier"),
                  nullable=False, index=True),
        sa.Column("subscription_id", sa.String(64), nullable=False, index=True),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("target", sa.String(500), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt", sa.Float, nullable=False, index=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("delivered_at", sa.Float, nullable=True),
    )
    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("delivery_key", sa.String(300), sa.ForeignKey("deliveries.key"),
                  nullable=False, index=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("ok", sa.Integer, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )


def downgrade() -> None:
    for table in ("delivery_attempts", "deliveries", "subscriptions", "alerts",
                  "incident_revisions", "incidents", "detections"):
        op.drop_table(table)
