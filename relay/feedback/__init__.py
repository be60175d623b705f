"""Mail that flows back: feedback reports (complaints) and delivery status notifications (bounces)."""
