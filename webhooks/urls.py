from django.urls import path

from webhooks import api

urlpatterns = [
    path("user/webhook", api.WebhookView.as_view()),
    path("user/webhook/deliveries", api.DeliveriesView.as_view()),
    path("user/webhook/redeliver", api.RedeliverView.as_view()),
]
